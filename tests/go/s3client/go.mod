module oscar-manager/tests/s3client

go 1.21

// The version github.com/grycap/oscar/v3 v3.3.0 (what oscar-cli v1.12.2 builds with) requires.
require github.com/aws/aws-sdk-go v1.44.189

require github.com/jmespath/go-jmespath v0.4.0 // indirect
