package format

// Regenerates format/onnxpb and format/slopepb from format/proto. Needs protoc
// (Debian: protobuf-compiler) and protoc-gen-go at the version in go.mod:
//   go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
//go:generate protoc -I proto --go_out=. --go_opt=module=github.com/slopeml/slope/format --go_opt=Monnx.proto=github.com/slopeml/slope/format/onnxpb --go_opt=Mmanifest.proto=github.com/slopeml/slope/format/slopepb proto/onnx.proto proto/manifest.proto
