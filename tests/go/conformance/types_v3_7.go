//go:build oscar_v3_7

package main

import "github.com/grycap/oscar/v3/pkg/types"

// Types that exist from v3.7 on.
func init() {
	decoders["status"] = into[types.StatusInfo] // GET /system/status
	decoders["jobs-v3.7"] = into[types.JobsResponse]
}
