// Command goconformance decodes the manager's JSON answers with the upstream OSCAR Go types, as the Go
// clients (oscar-cli) decode them, and says which ones fail.
//
// It is built twice from this one source: against github.com/grycap/oscar/v3 v3.3.0 (go.mod: what
// oscar-cli v1.12.2 builds with) and v3.7.1 (v3.7.1.mod, with -tags oscar_v3_7: the newest v3 the module
// proxy serves). scripts/build-goconformance does both.
//
// Input (stdin): a JSON array of {"label": "...", "type": "<name in decoders>", "body": "<the answer's
// bytes, as a JSON string>"}. Output (stdout): a JSON array of {"label", "type", "error"}, where error is
// "" when the body decoded, and "unknown type" when this version of the types has no such type.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"

	"github.com/grycap/oscar/v3/pkg/types"
)

// decoders maps a type name (what the tests say an answer is) to how a client decodes it. Adding a route
// to the conformance test is one line here (and one in tests/integration/api/test_go_conformance.py).
var decoders = map[string]func([]byte) error{
	"info":            into[types.Info],         // oscar-cli cluster info (cluster.GetClusterInfo)
	"config":          into[types.Config],       // oscar-cli apply/delete (cluster.GetClusterConfig)
	"config-for-user": into[configForUser],      // the handler's own shape (handlers.ConfigForUser in v3.7.1)
	"cli-user-config": cliUserConfig,            // oscar-cli file commands (storage.getProvider)
	"service":         into[types.Service],      // oscar-cli service get, apply, run, job, *-file
	"services":        into[[]*types.Service],   // oscar-cli service list
	"jobs":            into[jobsResponse],       // oscar-cli service logs list (service.ListLogs)
	"buckets":         into[[]minioBucket],      // oscar-cli bucket list; upstream []utils.MinIOBucket
	"bucket":          into[bucketListResponse], // oscar-cli bucket get; upstream buckets.BucketListResponse
}

// into decodes the way every oscar-cli call does: json.NewDecoder(res.Body).Decode(&v), unknown keys
// ignored (no client decodes with DisallowUnknownFields).
func into[T any](body []byte) error {
	var v T
	return json.NewDecoder(bytes.NewReader(body)).Decode(&v)
}

// configForUser is the shape of GET /system/config (upstream handlers.ConfigForUser): the cluster's
// config under "config" and the caller's MinIO provider beside it. Declared here rather than imported:
// pkg/handlers pulls in the whole manager.
type configForUser struct {
	Cfg           *types.Config        `json:"config"`
	MinIOProvider *types.MinIOProvider `json:"minio_provider"`
}

// cliUserConfig checks what oscar-cli's file commands do with GET /system/config: decode into an
// interface{}, then Go type assertions on minio_provider's fields, where a missing or null field panics.
func cliUserConfig(body []byte) (err error) {
	var config interface{}
	if err := json.NewDecoder(bytes.NewReader(body)).Decode(&config); err != nil {
		return err
	}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("oscar-cli would panic: %v", r)
		}
	}()
	provider := config.(map[string]interface{})["minio_provider"].(map[string]interface{})
	_ = types.MinIOProvider{
		AccessKey: provider["access_key"].(string),
		SecretKey: provider["secret_key"].(string),
		Region:    provider["region"].(string),
		Endpoint:  provider["endpoint"].(string),
		Verify:    provider["verify"].(bool),
	}
	return nil
}

// jobsResponse is oscar-cli's service.JobsResponse (types.JobsResponse from v3.7.1 on).
type jobsResponse struct {
	Jobs         map[string]*types.JobInfo `json:"jobs"`
	NextPage     string                    `json:"next_page,omitempty"`
	RemainingJob *int64                    `json:"remaining_jobs,omitempty"`
}

// minioBucket and minioObject are the fields of upstream's utils.MinIOBucket / utils.MinIOObject (v3.7.1;
// pkg/utils pulls in MinIO's admin client and Kubernetes, so they are declared here).
type minioBucket struct {
	BucketName   string            `json:"bucket_name"`
	Visibility   string            `json:"visibility"`
	AllowedUsers []string          `json:"allowed_users"`
	Owner        string            `json:"owner"`
	Metadata     map[string]string `json:"metadata"`
	Objects      []minioObject     `json:"objects,omitempty"`
}

type minioObject struct {
	ObjectName   string `json:"object_name"`
	SizeBytes    int64  `json:"size_bytes"`
	Owner        string `json:"owner,omitempty"`
	LastModified string `json:"last_modified,omitempty"`
}

// bucketListResponse is GET /system/buckets/{bucket} (upstream buckets.BucketListResponse).
type bucketListResponse struct {
	minioBucket
	NextPage      string `json:"next_page,omitempty"`
	IsTruncated   bool   `json:"is_truncated"`
	ReturnedItems int    `json:"returned_items"`
}

type document struct {
	Label string `json:"label"`
	Type  string `json:"type"`
	Body  string `json:"body"`
}

type result struct {
	Label string `json:"label"`
	Type  string `json:"type"`
	Error string `json:"error"`
}

func main() {
	var documents []document
	if err := json.NewDecoder(os.Stdin).Decode(&documents); err != nil {
		fmt.Fprintln(os.Stderr, "goconformance: reading the documents:", err)
		os.Exit(2)
	}
	results := make([]result, 0, len(documents))
	for _, doc := range documents {
		res := result{Label: doc.Label, Type: doc.Type}
		if decode, ok := decoders[doc.Type]; !ok {
			res.Error = "unknown type"
		} else if err := decode([]byte(doc.Body)); err != nil {
			res.Error = err.Error()
		}
		results = append(results, res)
	}
	if err := json.NewEncoder(os.Stdout).Encode(results); err != nil {
		fmt.Fprintln(os.Stderr, "goconformance: writing the results:", err)
		os.Exit(2)
	}
}
