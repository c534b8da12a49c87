// s3client drives the S3 face of oscar-manager the way oscar-cli's file commands do: aws-sdk-go v1 with
// the client configuration of github.com/grycap/oscar/v3 pkg/types MinIOProvider.GetS3Client (static
// credentials, endpoint, region, path-style), s3manager's Uploader and Downloader, ListObjects (v1),
// HeadObject and DeleteObject. It reads the provider as /system/config gives it (oscar-cli's type
// assertions included) and prints one JSON document of what it saw.
package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"

	"github.com/aws/aws-sdk-go/aws"
	"github.com/aws/aws-sdk-go/aws/credentials"
	"github.com/aws/aws-sdk-go/aws/session"
	"github.com/aws/aws-sdk-go/service/s3"
	"github.com/aws/aws-sdk-go/service/s3/s3manager"
)

type report struct {
	Listed        []string `json:"listed"`
	HeadLength    int64    `json:"head_length"`
	SmallContent  string   `json:"small_content"`
	LargeSHA256   string   `json:"large_sha256"`
	LargeSize     int64    `json:"large_size"`
	AfterDelete   []string `json:"after_delete"`
	WrongKeyError string   `json:"wrong_key_error"`
}

func fail(step string, err error) {
	fmt.Fprintf(os.Stderr, "%s: %v\n", step, err)
	os.Exit(1)
}

func client(provider map[string]interface{}, secret string) *s3.S3 {
	// As oscar-cli's getProvider: these assertions panic on a missing or null value.
	config := &aws.Config{
		Credentials:      credentials.NewStaticCredentials(provider["access_key"].(string), secret, ""),
		Endpoint:         aws.String(provider["endpoint"].(string)),
		Region:           aws.String(provider["region"].(string)),
		S3ForcePathStyle: aws.Bool(true),
	}
	_ = provider["verify"].(bool)
	return s3.New(session.New(config))
}

func keys(c *s3.S3, bucket, prefix string) []string {
	out, err := c.ListObjects(&s3.ListObjectsInput{Bucket: aws.String(bucket), Prefix: aws.String(prefix)})
	if err != nil {
		fail("ListObjects", err)
	}
	found := []string{}
	for _, object := range out.Contents {
		found = append(found, *object.Key)
	}
	return found
}

func main() {
	// Arguments: the manager's URL, admin user, password, bucket, folder.
	manager, user, password, bucket, folder := os.Args[1], os.Args[2], os.Args[3], os.Args[4], os.Args[5]
	request, _ := http.NewRequest(http.MethodGet, manager+"/system/config", nil)
	request.SetBasicAuth(user, password)
	response, err := http.DefaultClient.Do(request)
	if err != nil {
		fail("GET /system/config", err)
	}
	var config map[string]interface{}
	if err := json.NewDecoder(response.Body).Decode(&config); err != nil {
		fail("decode /system/config", err)
	}
	provider := config["minio_provider"].(map[string]interface{})
	c := client(provider, provider["secret_key"].(string))
	uploader := s3manager.NewUploaderWithClient(c)
	small := folder + "/small.txt"
	if _, err := uploader.Upload(&s3manager.UploadInput{
		Bucket: aws.String(bucket), Key: aws.String(small), Body: bytes.NewReader([]byte("from aws-sdk-go")),
	}); err != nil {
		fail("Upload small", err)
	}
	// Over s3manager's 5 MiB part size: a multipart upload, as oscar-cli put-file does for big files.
	large := bytes.Repeat([]byte("0123456789abcdef"), 12*1024*1024/16+7)
	if _, err := uploader.Upload(&s3manager.UploadInput{
		Bucket: aws.String(bucket), Key: aws.String(folder + "/large.bin"), Body: bytes.NewReader(large),
	}); err != nil {
		fail("Upload large", err)
	}
	var result report
	result.Listed = keys(c, bucket, folder)
	head, err := c.HeadObject(&s3.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String(small)})
	if err != nil {
		fail("HeadObject", err)
	}
	result.HeadLength = *head.ContentLength
	downloader := s3manager.NewDownloaderWithClient(c)
	smallOut := aws.NewWriteAtBuffer(nil)
	if _, err := downloader.Download(smallOut, &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(small)}); err != nil {
		fail("Download small", err)
	}
	result.SmallContent = string(smallOut.Bytes())
	// Ranged GETs of 5 MiB each, as s3manager's Downloader fetches a large object.
	largeOut := aws.NewWriteAtBuffer(nil) // safe for the Downloader's concurrent parts
	size, err := downloader.Download(largeOut, &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(folder + "/large.bin")})
	if err != nil {
		fail("Download large", err)
	}
	digest := sha256.Sum256(largeOut.Bytes())
	result.LargeSHA256, result.LargeSize = hex.EncodeToString(digest[:]), size
	// oscar-cli's delete-file ignores this call's error; the listing after it says whether it worked.
	c.DeleteObject(&s3.DeleteObjectInput{Bucket: aws.String(bucket), Key: aws.String(small)})
	result.AfterDelete = keys(c, bucket, folder)
	_, err = client(provider, "not-the-secret").ListObjects(&s3.ListObjectsInput{Bucket: aws.String(bucket)})
	if err != nil {
		result.WrongKeyError = err.Error()
	}
	json.NewEncoder(os.Stdout).Encode(result)
}
