// Package buildinfo carries the version stamped in by the Makefile.
package buildinfo

// Version is set with -ldflags -X at build time.
var Version = "dev"

// String is what the binaries print for their version.
func String(name string) string {
	return name + " " + Version
}
