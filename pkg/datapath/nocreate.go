package datapath

import (
	"errors"
	"fmt"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Every CNI ADD and DEL is a new process. In such a process, the first BPF
// map or program it creates (cilium/ebpf's feature probes create some) makes
// cilium/ebpf look for a BPF token, which reads and parses all of
// /proc/self/mountinfo; on a node that file holds a mount per pod network
// namespace, so that read grew with the number of pods (measured: 3-30 ms
// for 354 mounts on a busy machine, one per ADD). The two calls of the
// fast path that probed are replaced here by the plain syscalls, so a
// process that only opens the pins and attaches creates no BPF object.

// loadPinnedProgram is ebpf.LoadPinnedProgram without its object-name
// probe (which creates a map).
func loadPinnedProgram(path string) (*ebpf.Program, error) {
	if unsafe.Sizeof(uintptr(0)) != 8 {
		return ebpf.LoadPinnedProgram(path, nil)
	}
	p, err := unix.BytePtrFromString(path)
	if err != nil {
		return nil, err
	}
	attr := struct {
		pathname  unsafe.Pointer // __aligned_u64
		bpfFd     uint32
		fileFlags uint32
		pathFd    int32
		_         uint32
	}{pathname: unsafe.Pointer(p)}
	fd, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_OBJ_GET, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	if errno != 0 {
		return nil, fmt.Errorf("opening pin %s: %w", path, errno) // ENOENT is an os.ErrNotExist
	}
	prog, err := ebpf.NewProgramFromFD(int(fd))
	if err != nil {
		return nil, fmt.Errorf("pin %s: %w", path, err)
	}
	if t := prog.Type(); t != ebpf.SchedCLS {
		prog.Close()
		return nil, fmt.Errorf("pin %s is a %v program, not %v", path, t, ebpf.SchedCLS)
	}
	return prog, nil
}

// tcxLinkCreate is BPF_LINK_CREATE of prog on a TCX hook of ifindex, as
// the raw syscall: link.AttachTCX answers a failure with a feature probe
// that loads programs, and the TCX probe fails on purpose. It returns the
// errno; a link it did create is closed.
func tcxLinkCreate(prog *ebpf.Program, ifindex uint32, at ebpf.AttachType) error {
	attr := struct {
		progFd      uint32
		ifindex     uint32
		attachType  uint32
		flags       uint32
		relativeFd  uint32
		_           uint32
		expectedRev uint64
	}{progFd: uint32(prog.FD()), ifindex: ifindex, attachType: uint32(at)}
	fd, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_LINK_CREATE, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	if errno != 0 {
		return errno
	}
	unix.Close(int(fd))
	return nil
}

var errTCXProbeAttached = errors.New("tcx probe: attach to a non-existent device succeeded unexpectedly")
