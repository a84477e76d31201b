package bench

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
)

// Proxy is a userspace TCP proxy as a sidecar would run it in the receiving
// pod: it accepts on the pod's address and copies bytes to and from a server
// on localhost. It copies through a user buffer with read/write (as Envoy
// and friends do), deliberately not through Go's splice fast path.
type Proxy struct {
	ls []net.Listener
	wg sync.WaitGroup
}

// StartProxy listens on listen.Port()+off and forwards to
// upstream.Port()+off for the stream, RR and CRR ports.
func StartProxy(listen, upstream netip.AddrPort) (*Proxy, error) {
	p := &Proxy{}
	for _, off := range []uint16{PortStream, PortRR, PortCRR} {
		la := netip.AddrPortFrom(listen.Addr(), listen.Port()+off)
		ua := netip.AddrPortFrom(upstream.Addr(), upstream.Port()+off)
		l, err := net.Listen("tcp", la.String())
		if err != nil {
			p.Close()
			return nil, fmt.Errorf("proxy listen %s: %w", la, err)
		}
		p.ls = append(p.ls, l)
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				go proxyConn(c, ua)
			}
		}()
	}
	return p, nil
}

func proxyConn(down net.Conn, upstream netip.AddrPort) {
	defer down.Close()
	up, err := net.Dial("tcp", upstream.String())
	if err != nil {
		return
	}
	defer up.Close()
	if tc, ok := down.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	if tc, ok := up.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		buf := make([]byte, 64<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go pipe(up, down)
	go pipe(down, up)
	<-done
	<-done
}

// Close stops accepting.
func (p *Proxy) Close() {
	for _, l := range p.ls {
		_ = l.Close()
	}
}
