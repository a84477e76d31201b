package bench

import (
	"fmt"
	"sync"

	"github.com/cilium/ebpf"

	"github.com/podscope/podscope/pkg/datapath"
	"github.com/podscope/podscope/pkg/pins"
	"github.com/podscope/podscope/pkg/policy"
)

// podscopeDP is the datapath of one podscope variant, under its own bpffs
// root: each variant's pods live in their own node netns, where ifindexes
// repeat, and the datapath (like a node) keys attachments by ifindex. Its
// own root also means the "10 cidrs" trie holds only those 10 per pod.
type podscopeDP struct {
	cfg  *Config
	name string
	once sync.Once
	dp   *datapath.Datapath
	err  error
}

func (s *podscopeDP) open() (*datapath.Datapath, error) {
	s.once.Do(func() {
		dir, cleanup, err := benchBPFFSRoot(s.cfg, s.name, datapath.Cleanup)
		if err != nil {
			s.err = err
			return
		}
		s.cfg.onExit(cleanup)
		s.dp, s.err = datapath.Open(pins.New(dir))
		if s.err == nil {
			s.cfg.onExit(func() { _ = s.dp.Close() })
		}
	})
	return s.dp, s.err
}

// PolicyWithCIDRs is the policy every pod of a "N policy cidrs" variant
// gets in both directions: N deny rules that never match the pods'
// traffic (every third one tcp 9000-9100 only), default allow.
func PolicyWithCIDRs(idx, n int) policy.Policy {
	spec := policy.Spec{Default: policy.Allow}
	for i, pf := range DenyPrefixes(idx, n) {
		r := policy.Rule{CIDR: pf, Action: policy.Deny}
		if i%3 == 2 {
			r.Protocol = "tcp"
			r.Ports = []policy.PortRange{{From: 9000, To: 9100}}
		}
		spec.Rules = append(spec.Rules, r)
	}
	return policy.Policy{Egress: spec, Ingress: spec}
}

func podIDs(p *Pair) (client, server datapath.PodID) {
	return datapath.PodID(2*p.Index + 1), datapath.PodID(2*p.Index + 2)
}

// podscopeVariant attaches podscope (auto mode: tcx here) to both host
// veths of the pair and, with cidrs > 0, gives both pods a policy of that
// many CIDRs in both directions, so each packet is looked up at the
// sender's egress and the receiver's ingress.
func podscopeVariant(cfg *Config, name string, cidrs int) *Variant {
	s := &podscopeDP{cfg: cfg, name: fmt.Sprintf("dp%d", cidrs)}
	v := &Variant{Name: name}
	if cidrs > 0 {
		v.Note = fmt.Sprintf("%d deny cidrs per pod and direction, never matching (LPM trie)", cidrs)
	} else {
		v.Note = "counters + flow table, no policy entries"
	}
	v.Setup = func(p *Pair) error {
		dp, err := s.open()
		if err != nil {
			return err
		}
		cfg.logf("  datapath open")
		cli, srv := podIDs(p)
		for _, x := range []struct {
			id     datapath.PodID
			ifname string
		}{{cli, p.HostClient}, {srv, p.HostServer}} {
			idx, err := p.Ifindex(x.ifname)
			if err != nil {
				return err
			}
			if err := inNetnsDo(p.Node, func() error {
				_, err := dp.Attach(x.id, idx, "")
				return err
			}); err != nil {
				return fmt.Errorf("attach pod %d: %w", x.id, err)
			}
			cfg.logf("  attached pod %d", x.id)
			if cidrs > 0 {
				if err := dp.SetPolicy(x.id, PolicyWithCIDRs(p.Index, cidrs)); err != nil {
					return fmt.Errorf("set policy of pod %d: %w", x.id, err)
				}
				cfg.logf("  policy of pod %d set", x.id)
			}
		}
		return nil
	}
	v.Verify = func(p *Pair) error {
		dp, err := s.open()
		if err != nil {
			return err
		}
		cli, srv := podIDs(p)
		c, err := dp.Counters(cli)
		if err != nil {
			return err
		}
		sc, err := dp.Counters(srv)
		if err != nil {
			return err
		}
		if c.TxPackets == 0 || sc.RxPackets == 0 {
			return fmt.Errorf("podscope counted client tx %d, server rx %d packets: programs not on the path", c.TxPackets, sc.RxPackets)
		}
		if c.DropsEgress+sc.DropsIngress > 0 {
			return fmt.Errorf("policy dropped %d packets: a rule matched the bench traffic", c.DropsEgress+sc.DropsIngress)
		}
		return nil
	}
	v.Programs = func() (map[string]ebpf.ProgramID, error) {
		dp, err := s.open()
		if err != nil {
			return nil, err
		}
		in, eg, err := dp.ProgramIDs()
		return map[string]ebpf.ProgramID{"ingress": in, "egress": eg}, err
	}
	v.Teardown = func(p *Pair) error {
		dp, err := s.open()
		if err != nil {
			return err
		}
		cli, srv := podIDs(p)
		return inNetnsDo(p.Node, func() error {
			for _, id := range []datapath.PodID{cli, srv} {
				if err := dp.Detach(id); err != nil {
					return err
				}
				if err := dp.RemovePod(id); err != nil {
					return err
				}
			}
			return nil
		})
	}
	return v
}

// PodscopeVariants are podscope's own datapath variants.
func PodscopeVariants(cfg *Config) []*Variant {
	return []*Variant{
		podscopeVariant(cfg, "podscope, accounting only", 0),
		podscopeVariant(cfg, "podscope, 10 policy cidrs", 10),
		podscopeVariant(cfg, "podscope, 1,000 policy cidrs", 1000),
		podscopeVariant(cfg, "podscope, 100,000 policy cidrs", 100000),
	}
}
