package datapath

import (
	"encoding/binary"
	"net/netip"
)

// Hand-built frames for BPF_PROG_TEST_RUN: Ethernet + IPv4/IPv6 + L4, no
// checksums (the programs never check them).

const (
	ethIPv4 = 0x0800
	ethIPv6 = 0x86dd
	ethARP  = 0x0806

	tcpSYN = 0x02
	tcpACK = 0x10
)

func ether(typ uint16, payload []byte) []byte {
	b := make([]byte, 14, 14+len(payload))
	copy(b[0:6], []byte{2, 0, 0, 0, 0, 1})
	copy(b[6:12], []byte{2, 0, 0, 0, 0, 2})
	binary.BigEndian.PutUint16(b[12:], typ)
	return append(b, payload...)
}

func tcpHdr(sport, dport uint16, flags byte) []byte {
	b := make([]byte, 20)
	binary.BigEndian.PutUint16(b[0:], sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	b[12] = 5 << 4
	b[13] = flags
	return b
}

func udpHdr(sport, dport uint16, payload int) []byte {
	b := make([]byte, 8+payload)
	binary.BigEndian.PutUint16(b[0:], sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	binary.BigEndian.PutUint16(b[4:], uint16(8+payload))
	return b
}

func icmpEcho(typ byte, id, seq uint16) []byte {
	b := make([]byte, 8+16)
	b[0] = typ
	binary.BigEndian.PutUint16(b[4:], id)
	binary.BigEndian.PutUint16(b[6:], seq)
	return b
}

// ipv4 builds an IPv4 frame; fragOff is in 8-byte units, mf sets More Fragments.
func ipv4Frag(src, dst string, proto byte, l4 []byte, fragOff uint16, mf bool) []byte {
	h := make([]byte, 20)
	h[0] = 0x45
	binary.BigEndian.PutUint16(h[2:], uint16(20+len(l4)))
	f := fragOff & 0x1fff
	if mf {
		f |= 0x2000
	}
	binary.BigEndian.PutUint16(h[6:], f)
	h[8] = 64
	h[9] = proto
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(h[12:], s[:])
	copy(h[16:], d[:])
	return ether(ethIPv4, append(h, l4...))
}

func ipv4(src, dst string, proto byte, l4 []byte) []byte {
	return ipv4Frag(src, dst, proto, l4, 0, false)
}

// ipv6 builds an IPv6 frame; ext are (next header, body) extension headers
// placed before the L4 header, each body already padded to its length.
type ext6 struct {
	typ  byte
	body []byte // without the first two bytes (next header, length)
}

func ipv6(src, dst string, proto byte, l4 []byte, exts ...ext6) []byte {
	h := make([]byte, 40)
	h[0] = 6 << 4
	h[7] = 64
	s, d := netip.MustParseAddr(src).As16(), netip.MustParseAddr(dst).As16()
	copy(h[8:], s[:])
	copy(h[24:], d[:])
	var payload []byte
	next := proto
	for i := len(exts) - 1; i >= 0; i-- {
		e := exts[i]
		var hdr []byte
		if e.typ == 44 { // fragment header: fixed 8 bytes
			hdr = append([]byte{next, 0}, e.body...)
		} else {
			hdr = append([]byte{next, byte((2+len(e.body))/8 - 1)}, e.body...)
		}
		payload = append(hdr, payload...)
		next = e.typ
	}
	h[6] = next
	payload = append(payload, l4...)
	binary.BigEndian.PutUint16(h[4:], uint16(len(payload)))
	return ether(ethIPv6, append(h, payload...))
}

func frag6(offset8 uint16, more bool) ext6 {
	b := make([]byte, 6)
	v := offset8 << 3
	if more {
		v |= 1
	}
	binary.BigEndian.PutUint16(b[0:], v)
	return ext6{typ: 44, body: b}
}

func arp() []byte {
	return ether(ethARP, make([]byte, 28))
}

// icmpError builds an ICMP (or ICMPv6) error of typ/code quoting orig (an
// IP packet without its Ethernet header).
func icmpError(typ, code byte, orig []byte) []byte {
	b := make([]byte, 8, 8+len(orig))
	b[0], b[1] = typ, code
	return append(b, orig...)
}

func ndp(typ byte) []byte {
	b := make([]byte, 24)
	b[0] = typ
	return b
}
