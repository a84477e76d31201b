package bench

// The project's load tool: netperf-like TCP_STREAM, TCP_RR, TCP_CRR and a
// small-packet UDP blast. Sockets are blocking and driven by raw syscalls on
// threads locked to their goroutines (no Go netpoller in the measured loop),
// so a transaction costs what it costs netperf: one write and one read per
// side. The server runs once per pod; each measurement is a fresh client
// process inside the client pod's netns.

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Ports of the load server (offsets from a base port).
const (
	PortStream  = 0 // read and discard until EOF, then close
	PortRR      = 1 // echo 1-byte requests with 1-byte responses
	PortCRR     = 2 // per connection: read request, write response, close
	PortUDP     = 3 // count datagrams
	PortControl = 4 // "count\n" -> UDP datagrams received so far
)

// LoadResult is what one client run measured.
type LoadResult struct {
	Mode    string  `json:"mode"`
	Seconds float64 `json:"seconds"`
	// Value in the mode's unit: Gbit/s for stream, transactions/s for rr and
	// crr, received packets/s for udp.
	Value float64 `json:"value"`
	Unit  string  `json:"unit"`
	// Ops is the raw count (bytes, transactions, packets received).
	Ops  uint64 `json:"ops"`
	Sent uint64 `json:"sent,omitempty"`
}

// Server is a running load server.
type Server struct {
	fds     []int
	udpRecv atomic.Uint64
	wg      sync.WaitGroup
	closed  atomic.Bool
}

func sockaddr(ap netip.AddrPort) unix.Sockaddr {
	a := ap.Addr().Unmap()
	if a.Is4() {
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: a.As4()}
	}
	return &unix.SockaddrInet6{Port: int(ap.Port()), Addr: a.As16()}
}

func family(a netip.Addr) int {
	if a.Unmap().Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

func listenTCP(ap netip.AddrPort) (int, error) {
	fd, err := unix.Socket(family(ap.Addr()), unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	if err := unix.Bind(fd, sockaddr(ap)); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("bind %s: %w", ap, err)
	}
	if err := unix.Listen(fd, 1024); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// Serve starts the load server on addr (base port p uses p..p+4). Use an
// unspecified address (0.0.0.0) to accept on every interface.
func Serve(addr netip.AddrPort) (*Server, error) {
	s := &Server{}
	port := func(off uint16) netip.AddrPort { return netip.AddrPortFrom(addr.Addr(), addr.Port()+off) }
	handlers := []func(int){s.serveStream, s.serveRR, s.serveCRR}
	for i, h := range handlers {
		fd, err := listenTCP(port(uint16(i)))
		if err != nil {
			s.Close()
			return nil, err
		}
		s.fds = append(s.fds, fd)
		s.wg.Add(1)
		go func(fd int, h func(int)) { defer s.wg.Done(); s.acceptLoop(fd, h, i == PortCRR) }(fd, h)
	}
	ufd, err := unix.Socket(family(addr.Addr()), unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		s.Close()
		return nil, err
	}
	// Root may raise the buffer past rmem_max: a full buffer would measure
	// the receiver, not the path.
	_ = unix.SetsockoptInt(ufd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 32<<20)
	if err := unix.Bind(ufd, sockaddr(port(PortUDP))); err != nil {
		unix.Close(ufd)
		s.Close()
		return nil, fmt.Errorf("bind udp: %w", err)
	}
	s.fds = append(s.fds, ufd)
	s.wg.Add(1)
	go func() { defer s.wg.Done(); s.serveUDP(ufd) }()
	cfd, err := listenTCP(port(PortControl))
	if err != nil {
		s.Close()
		return nil, err
	}
	s.fds = append(s.fds, cfd)
	s.wg.Add(1)
	go func() { defer s.wg.Done(); s.acceptLoop(cfd, s.serveControl, true) }()
	return s, nil
}

// Close stops the listeners (connections in flight end with their clients).
func (s *Server) Close() {
	if s.closed.Swap(true) {
		return
	}
	for _, fd := range s.fds {
		_ = unix.Shutdown(fd, unix.SHUT_RDWR)
		unix.Close(fd)
	}
}

// UDPReceived is the number of datagrams counted so far.
func (s *Server) UDPReceived() uint64 { return s.udpRecv.Load() }

func (s *Server) acceptLoop(lfd int, h func(int), inline bool) {
	runtime.LockOSThread()
	for {
		fd, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
		if err != nil {
			if errors.Is(err, unix.EINTR) || errors.Is(err, unix.ECONNABORTED) {
				continue
			}
			return
		}
		if inline {
			h(fd)
			continue
		}
		go func() {
			runtime.LockOSThread()
			h(fd)
		}()
	}
}

func (s *Server) serveStream(fd int) {
	defer unix.Close(fd)
	buf := make([]byte, 256<<10)
	for {
		n, err := unix.Read(fd, buf)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if n <= 0 || err != nil {
			return
		}
	}
}

func (s *Server) serveRR(fd int) {
	defer unix.Close(fd)
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	buf := make([]byte, 64)
	for {
		n, err := unix.Read(fd, buf)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if n <= 0 || err != nil {
			return
		}
		if err := writeFull(fd, buf[:n]); err != nil {
			return
		}
	}
}

// serveCRR answers one request and closes first, so TIME_WAIT lands on the
// server and the client's ephemeral ports never run out.
func (s *Server) serveCRR(fd int) {
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	buf := make([]byte, 64)
	for {
		n, err := unix.Read(fd, buf)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if n > 0 && err == nil {
			_ = writeFull(fd, buf[:n])
		}
		break
	}
	unix.Close(fd)
}

func (s *Server) serveUDP(fd int) {
	runtime.LockOSThread()
	const batch = 64
	bufs := make([][]byte, batch)
	iov := make([]unix.Iovec, batch)
	msgs := make([]mmsghdr, batch)
	for i := range bufs {
		bufs[i] = make([]byte, 2048)
		iov[i].Base = &bufs[i][0]
		iov[i].SetLen(len(bufs[i]))
		msgs[i].Hdr.Iov = &iov[i]
		msgs[i].Hdr.Iovlen = 1
	}
	for {
		n, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(fd), uintptr(unsafe.Pointer(&msgs[0])), batch, unix.MSG_WAITFORONE, 0, 0)
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 || s.closed.Load() {
			return
		}
		s.udpRecv.Add(uint64(n))
	}
}

func (s *Server) serveControl(fd int) {
	defer unix.Close(fd)
	f := fdConn{fd}
	line, err := bufio.NewReader(f).ReadString('\n')
	if err != nil && line == "" {
		return
	}
	if strings.TrimSpace(line) == "count" {
		_ = writeFull(fd, []byte(strconv.FormatUint(s.udpRecv.Load(), 10)+"\n"))
	}
}

type mmsghdr struct {
	Hdr unix.Msghdr
	Len uint32
	_   [4]byte
}

type fdConn struct{ fd int }

func (c fdConn) Read(p []byte) (int, error) {
	for {
		n, err := unix.Read(c.fd, p)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return 0, err
		}
		if n == 0 {
			return 0, io.EOF
		}
		return n, nil
	}
}

func writeFull(fd int, p []byte) error {
	for len(p) > 0 {
		n, err := unix.Write(fd, p)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		p = p[n:]
	}
	return nil
}

func readFull(fd int, p []byte) error {
	for len(p) > 0 {
		n, err := unix.Read(fd, p)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return io.ErrUnexpectedEOF
		}
		p = p[n:]
	}
	return nil
}

func dialTCP(ap netip.AddrPort) (int, error) {
	fd, err := unix.Socket(family(ap.Addr()), unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	for {
		err = unix.Connect(fd, sockaddr(ap))
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("connect %s: %w", ap, err)
	}
	return fd, nil
}

// LoadOptions selects one client run.
type LoadOptions struct {
	Mode     string // stream, rr, crr, udp
	Target   netip.AddrPort
	Streams  int           // stream: parallel connections
	Duration time.Duration // measuring time
	// Control is the server's base address for the UDP count (defaults to
	// Target; set it when Target is a proxy).
	Control netip.AddrPort
}

// RunLoad runs one client measurement against the server (or a proxy that
// mirrors its ports) whose base port is Target's.
func RunLoad(o LoadOptions) (LoadResult, error) {
	if o.Duration <= 0 {
		o.Duration = time.Second
	}
	if !o.Control.IsValid() {
		o.Control = o.Target
	}
	at := func(off uint16) netip.AddrPort { return netip.AddrPortFrom(o.Target.Addr(), o.Target.Port()+off) }
	switch o.Mode {
	case "stream":
		if o.Streams <= 0 {
			o.Streams = 1
		}
		return runStream(at(PortStream), o.Streams, o.Duration)
	case "rr":
		return runRR(at(PortRR), o.Duration)
	case "crr":
		return runCRR(at(PortCRR), o.Duration)
	case "udp":
		return runUDP(at(PortUDP), netip.AddrPortFrom(o.Control.Addr(), o.Control.Port()+PortControl), o.Duration)
	}
	return LoadResult{}, fmt.Errorf("unknown load mode %q (stream, rr, crr, udp)", o.Mode)
}

func runStream(ap netip.AddrPort, streams int, d time.Duration) (LoadResult, error) {
	var total atomic.Uint64
	errs := make(chan error, streams)
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for i := 0; i < streams; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			fd, err := dialTCP(ap)
			if err != nil {
				errs <- err
				return
			}
			defer unix.Close(fd)
			buf := make([]byte, 128<<10)
			var sent uint64
			for time.Now().Before(deadline) {
				n, err := unix.Write(fd, buf)
				if errors.Is(err, unix.EINTR) {
					continue
				}
				if err != nil {
					errs <- err
					return
				}
				sent += uint64(n)
			}
			// Count only what the server consumed: half-close and wait for
			// its close, which comes after it drained the socket.
			_ = unix.Shutdown(fd, unix.SHUT_WR)
			one := make([]byte, 1)
			for {
				n, err := unix.Read(fd, one)
				if errors.Is(err, unix.EINTR) {
					continue
				}
				if n <= 0 || err != nil {
					break
				}
			}
			total.Add(sent)
		}()
	}
	wg.Wait()
	el := time.Since(start).Seconds()
	close(errs)
	if err := <-errs; err != nil {
		return LoadResult{}, err
	}
	b := total.Load()
	return LoadResult{Mode: "stream", Seconds: el, Value: float64(b) * 8 / el / 1e9, Unit: "Gbit/s", Ops: b}, nil
}

func runRR(ap netip.AddrPort, d time.Duration) (LoadResult, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	fd, err := dialTCP(ap)
	if err != nil {
		return LoadResult{}, err
	}
	defer unix.Close(fd)
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	req, resp := []byte{'r'}, make([]byte, 1)
	// Warm up (ARP, first-packet paths) outside the measured time.
	for i := 0; i < 100; i++ {
		if err := writeFull(fd, req); err != nil {
			return LoadResult{}, err
		}
		if err := readFull(fd, resp); err != nil {
			return LoadResult{}, err
		}
	}
	var n uint64
	start := time.Now()
	deadline := start.Add(d)
	for {
		if err := writeFull(fd, req); err != nil {
			return LoadResult{}, err
		}
		if err := readFull(fd, resp); err != nil {
			return LoadResult{}, err
		}
		n++
		if n&15 == 0 && !time.Now().Before(deadline) {
			break
		}
	}
	el := time.Since(start).Seconds()
	return LoadResult{Mode: "rr", Seconds: el, Value: float64(n) / el, Unit: "trans/s", Ops: n}, nil
}

func runCRR(ap netip.AddrPort, d time.Duration) (LoadResult, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	req, resp := []byte{'c'}, make([]byte, 1)
	var n uint64
	start := time.Now()
	deadline := start.Add(d)
	for time.Now().Before(deadline) {
		fd, err := dialTCP(ap)
		if err != nil {
			return LoadResult{}, err
		}
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		if err := writeFull(fd, req); err != nil {
			unix.Close(fd)
			return LoadResult{}, err
		}
		if err := readFull(fd, resp); err != nil {
			unix.Close(fd)
			return LoadResult{}, err
		}
		// Wait for the server's FIN so the client side never holds TIME_WAIT.
		for {
			m, err := unix.Read(fd, resp)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if m <= 0 || err != nil {
				break
			}
		}
		unix.Close(fd)
		n++
	}
	el := time.Since(start).Seconds()
	return LoadResult{Mode: "crr", Seconds: el, Value: float64(n) / el, Unit: "conn/s", Ops: n}, nil
}

func udpCount(ctl netip.AddrPort) (uint64, error) {
	c, err := net.DialTimeout("tcp", ctl.String(), 2*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.WriteString(c, "count\n"); err != nil {
		return 0, err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return 0, fmt.Errorf("udp count from %s: %w", ctl, err)
	}
	return strconv.ParseUint(strings.TrimSpace(line), 10, 64)
}

// runUDP sends 18-byte payloads (64-byte Ethernet frames) with sendmmsg
// batches and reports what the server received per second.
func runUDP(ap, ctl netip.AddrPort, d time.Duration) (LoadResult, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	fd, err := unix.Socket(family(ap.Addr()), unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return LoadResult{}, err
	}
	defer unix.Close(fd)
	if err := unix.Connect(fd, sockaddr(ap)); err != nil {
		return LoadResult{}, err
	}
	const batch = 32
	payload := make([]byte, 18)
	iov := unix.Iovec{Base: &payload[0]}
	iov.SetLen(len(payload))
	msgs := make([]mmsghdr, batch)
	for i := range msgs {
		msgs[i].Hdr.Iov = &iov
		msgs[i].Hdr.Iovlen = 1
	}
	send := func() (int, error) {
		r, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&msgs[0])), batch, 0, 0, 0)
		if errno != 0 {
			return 0, errno
		}
		return int(r), nil
	}
	for i := 0; i < 10; i++ { // warm up: ARP, bridge FDB
		if _, err := send(); err != nil && !errors.Is(err, unix.ECONNREFUSED) {
			return LoadResult{}, err
		}
	}
	time.Sleep(20 * time.Millisecond)
	c0, err := udpCount(ctl)
	if err != nil {
		return LoadResult{}, err
	}
	var sent uint64
	start := time.Now()
	deadline := start.Add(d)
	for time.Now().Before(deadline) {
		n, err := send()
		if err != nil && !errors.Is(err, unix.ENOBUFS) && !errors.Is(err, unix.EINTR) && !errors.Is(err, unix.ECONNREFUSED) {
			return LoadResult{}, err
		}
		sent += uint64(n)
	}
	el := time.Since(start).Seconds()
	time.Sleep(50 * time.Millisecond) // let the receiver drain its buffer
	c1, err := udpCount(ctl)
	if err != nil {
		return LoadResult{}, err
	}
	got := c1 - c0
	return LoadResult{Mode: "udp", Seconds: el, Value: float64(got) / el, Unit: "pkt/s", Ops: got, Sent: sent}, nil
}
