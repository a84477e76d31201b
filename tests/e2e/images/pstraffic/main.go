// Command pstraffic is the end-to-end suite's traffic tool, packed into the
// local busybox image as /bin/pstraffic (busybox's nc has no UDP and no byte
// counts). It sends and receives exact amounts so that the suite can compare
// podscope's counters with what was really sent.
//
//	pstraffic tcp-serve PORT              accept forever; read and discard, then write back "ok <n>\n"
//	pstraffic tcp-send ADDR BYTES         connect, send BYTES, half-close, print the server's reply
//	pstraffic tcp-connect ADDR TIMEOUT    exit 0 if a connection is established within TIMEOUT
//	pstraffic udp-echo PORT               echo every datagram back to its sender
//	pstraffic udp-send ADDR COUNT SIZE    send COUNT datagrams of SIZE bytes, print how many echoes came back
package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"time"
)

func main() {
	if len(os.Args) < 3 {
		fail(fmt.Errorf("usage: pstraffic tcp-serve|tcp-send|tcp-connect|udp-echo|udp-send ARGS"))
	}
	var err error
	switch a := os.Args[2:]; os.Args[1] {
	case "tcp-serve":
		err = tcpServe(a[0])
	case "tcp-send":
		err = tcpSend(a[0], atoi(a, 1))
	case "tcp-connect":
		err = tcpConnect(a[0], a[1])
	case "udp-echo":
		err = udpEcho(a[0])
	case "udp-send":
		err = udpSend(a[0], atoi(a, 1), atoi(a, 2))
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "pstraffic:", err)
	os.Exit(1)
}

func atoi(a []string, i int) int {
	if i >= len(a) {
		fail(fmt.Errorf("missing argument %d", i+1))
	}
	n, err := strconv.Atoi(a[i])
	if err != nil {
		fail(err)
	}
	return n
}

func tcpServe(port string) error {
	l, err := net.Listen("tcp", ":"+port)
	if err != nil {
		return err
	}
	for {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			n, _ := io.Copy(io.Discard, c)
			fmt.Fprintf(c, "ok %d\n", n)
		}()
	}
}

func tcpSend(addr string, n int) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.CopyN(c, zeros{}, int64(n)); err != nil {
		return err
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return err
	}
	reply, err := io.ReadAll(c)
	if err != nil {
		return err
	}
	os.Stdout.Write(reply)
	return nil
}

func tcpConnect(addr, timeout string) error {
	d, err := time.ParseDuration(timeout)
	if err != nil {
		return err
	}
	c, err := net.DialTimeout("tcp", addr, d)
	if err != nil {
		return err
	}
	fmt.Println("connected")
	return c.Close()
}

func udpEcho(port string) error {
	c, err := net.ListenPacket("udp", ":"+port)
	if err != nil {
		return err
	}
	buf := make([]byte, 65536)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			return err
		}
		if _, err := c.WriteTo(buf[:n], from); err != nil {
			return err
		}
	}
}

func udpSend(addr string, count, size int) error {
	c, err := net.Dial("udp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	msg := bytes.Repeat([]byte{'u'}, size)
	buf := make([]byte, 65536)
	got := 0
	for i := 0; i < count; i++ {
		if _, err := c.Write(msg); err != nil {
			return err
		}
		// One datagram in flight at a time: no loss from overrunning a
		// socket buffer, so sent and echoed counts are exact.
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if n, err := c.Read(buf); err == nil && n == size {
			got++
		}
	}
	fmt.Printf("echoed %d\n", got)
	return nil
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
