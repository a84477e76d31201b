package integration

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

// All traffic stays between the test's own pod namespaces, bounded in size
// and time.

// tcpSink listens in p's netns on port and counts bytes received; it returns
// the listener (closed by the caller) and a channel of per-connection totals.
func tcpSink(p *pod, addr netip.Addr, port int) (net.Listener, <-chan int64, error) {
	var l net.Listener
	err := p.ns.Do(func(ns.NetNS) error {
		var err error
		l, err = net.Listen("tcp", net.JoinHostPort(addr.String(), strconv.Itoa(port)))
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	totals := make(chan int64, 16)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				close(totals)
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				n, _ := io.Copy(io.Discard, c)
				// Answer so the reply direction is exercised.
				c.Write([]byte("ok"))
				totals <- n
			}()
		}
	}()
	return l, totals, nil
}

// tcpSend dials from p to dst, sends n bytes, half-closes and reads the
// answer. The connection is opened inside p's netns.
func tcpSend(p *pod, dst netip.AddrPort, n int, timeout time.Duration) error {
	var c net.Conn
	err := p.ns.Do(func(ns.NetNS) error {
		var err error
		c, err = net.DialTimeout("tcp", dst.String(), timeout)
		return err
	})
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, n)
	if _, err := c.Write(buf); err != nil {
		return err
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return err
	}
	ans, err := io.ReadAll(c)
	if err != nil {
		return err
	}
	if string(ans) != "ok" {
		return fmt.Errorf("answer %q", ans)
	}
	return nil
}

// udpExchange sends count datagrams of size bytes from src to dst and has dst
// echo each back; it returns how many echoes came back.
func udpExchange(src, dst *pod, dstAddr netip.AddrPort, count, size int) (int, error) {
	got, _, err := udpExchangeLocal(src, dst, dstAddr, count, size)
	return got, err
}

// udpExchangeLocal is udpExchange that also returns the client's address.
func udpExchangeLocal(src, dst *pod, dstAddr netip.AddrPort, count, size int) (int, netip.AddrPort, error) {
	var srv, cli *net.UDPConn
	err := dst.ns.Do(func(ns.NetNS) error {
		var err error
		srv, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(dstAddr))
		return err
	})
	if err != nil {
		return 0, netip.AddrPort{}, err
	}
	defer srv.Close()
	go func() {
		buf := make([]byte, 65536)
		for {
			srv.SetReadDeadline(time.Now().Add(5 * time.Second))
			n, from, err := srv.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			srv.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	err = src.ns.Do(func(ns.NetNS) error {
		var err error
		cli, err = net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(dstAddr))
		return err
	})
	if err != nil {
		return 0, netip.AddrPort{}, err
	}
	defer cli.Close()
	local := cli.LocalAddr().(*net.UDPAddr).AddrPort()
	local = netip.AddrPortFrom(local.Addr().Unmap(), local.Port())
	got := 0
	buf := make([]byte, 65536)
	payload := make([]byte, size)
	for i := 0; i < count; i++ {
		if _, err := cli.Write(payload); err != nil {
			return got, local, err
		}
		cli.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := cli.Read(buf); err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return got, local, err
		}
		got++
	}
	return got, local, nil
}
