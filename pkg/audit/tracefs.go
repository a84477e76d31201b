package audit

import "golang.org/x/sys/unix"

func mountTracefs(dir string) error {
	return unix.Mount("tracefs", dir, "tracefs", 0, "")
}
