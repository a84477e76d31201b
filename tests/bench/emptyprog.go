package bench

import (
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
)

// emptyProgVariant attaches a program that does nothing (returns
// TCX_NEXT) to both hooks of both host veths: what any TC program costs
// on this path before it does any work, to split podscope's cost into the
// hook's and the program body's.
func emptyProgVariant() *Variant {
	v := &Variant{Name: "empty TCX program (hook cost)", Note: "return TCX_NEXT on both hooks of both host veths"}
	var prog *ebpf.Program
	var links []link.Link
	v.Setup = func(p *Pair) error {
		var err error
		prog, err = ebpf.NewProgram(&ebpf.ProgramSpec{
			Name: "pstest_empty", Type: ebpf.SchedCLS, License: "GPL",
			Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()},
		})
		if err != nil {
			return fmt.Errorf("loading the empty program: %w", err)
		}
		for _, ifname := range []string{p.HostClient, p.HostServer} {
			idx, err := p.Ifindex(ifname)
			if err != nil {
				return err
			}
			for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
				err := inNetnsDo(p.Node, func() error {
					l, err := link.AttachTCX(link.TCXOptions{Interface: idx, Program: prog, Attach: at})
					if err == nil {
						links = append(links, l)
					}
					return err
				})
				if err != nil {
					return fmt.Errorf("attaching the empty program to %s: %w", ifname, err)
				}
			}
		}
		return nil
	}
	v.Programs = func() (map[string]ebpf.ProgramID, error) {
		info, err := prog.Info()
		if err != nil {
			return nil, err
		}
		id, _ := info.ID()
		return map[string]ebpf.ProgramID{"both": id}, nil
	}
	v.Teardown = func(p *Pair) error {
		for _, l := range links {
			_ = l.Close()
		}
		if prog != nil {
			return prog.Close()
		}
		return nil
	}
	return v
}
