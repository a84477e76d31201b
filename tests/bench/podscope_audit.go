package bench

import (
	"context"
	"errors"
	"os"
	"strconv"

	"github.com/podscope/podscope/pkg/audit"
	"github.com/podscope/podscope/pkg/datapath"
	"github.com/podscope/podscope/pkg/pins"
	"github.com/podscope/podscope/pkg/pods"
)

// podscopeAudit drives pkg/audit for the audit section: each Load is a
// fresh bpffs root (the first probes the mode, later ones force it, so
// the probe is paid once), each Unload removes everything.
type podscopeAudit struct {
	cfg     *Config
	mode    audit.Mode
	a       *audit.Auditor
	root    string
	cleanup func()
	n       int
}

func newAuditBackend(cfg *Config) (AuditBackend, string) {
	return &podscopeAudit{cfg: cfg}, ""
}

func (p *podscopeAudit) Load() error {
	p.n++
	dir, cleanup, err := benchBPFFSRoot(p.cfg, "audit"+strconv.Itoa(p.n), audit.Cleanup)
	if err != nil {
		return err
	}
	a, err := audit.Open(pins.New(dir), audit.Options{Mode: p.mode})
	if err != nil {
		cleanup()
		return err
	}
	if p.mode == "" {
		p.cfg.logf("audit: %s", a.Probe())
	}
	p.a, p.root, p.cleanup, p.mode = a, dir, cleanup, a.Mode()
	return nil
}

func (p *podscopeAudit) Arm(cg string) (uint64, error) {
	return p.a.Arm(cg, audit.Identity{Identity: pods.Identity{Namespace: "bench", Pod: "bench", PodUID: "bench"}, Container: "loop", ContainerID: "bench"})
}

func (p *podscopeAudit) Unload() error {
	if p.a == nil {
		return nil
	}
	err := p.a.Close()
	p.cleanup()
	p.a = nil
	if _, serr := os.Stat(p.root); serr == nil {
		return os.RemoveAll(p.root)
	}
	return err
}

func (p *podscopeAudit) Mode() string { return string(p.mode) }

func (p *podscopeAudit) Read(ctx context.Context, sink func(string, uint32)) error {
	return p.a.Run(ctx, func(ev audit.Event) { sink(ev.Path, ev.Count) })
}

func (p *podscopeAudit) Lost(cgid uint64) (uint64, error) {
	m, err := p.a.Lost()
	if err != nil {
		return 0, err
	}
	return m[cgid] + m[0], nil
}

// cleanupPins detaches and unpins podscope's datapath and audit under a
// leftover bench root.
func cleanupPins(dir string) error {
	root := pins.New(dir)
	return errors.Join(datapath.Cleanup(root), audit.Cleanup(root))
}
