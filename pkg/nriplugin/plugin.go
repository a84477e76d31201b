// Package nriplugin is podscope-nri's NRI plugin: it arms the file-write
// audit for every audited container before the container's first
// instruction and disarms it when the container goes.
//
// The runtime's view of containers arrives through the NRI stub; the kernel
// side is behind Arming (pkg/audit's Auditor in the daemon, a fake in tests)
// and cgroup lookup behind CgroupResolver (pkg/cgroups).
package nriplugin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/stub"

	"github.com/podscope/podscope/pkg/cgroups"
	"github.com/podscope/podscope/pkg/fault"
	"github.com/podscope/podscope/pkg/pods"
)

// AuditAnnotation is the pod annotation that opts a pod out of the audit
// ("false") or, under --audit-default=off, in ("true").
const AuditAnnotation = "podscope.io/audit"

// Arming is what the plugin needs from the kernel side: pkg/audit's Auditor.
type Arming interface {
	// Arm starts auditing the cgroup at dir, all-or-nothing and idempotent.
	Arm(dir string, id Identity) (uint64, error)
	// Disarm stops auditing a cgroup id; disarming one that is not armed is
	// not an error.
	Disarm(cgroupID uint64) error
	// Armed lists what is armed now, read from the pins: it outlives us.
	Armed() (map[uint64]Identity, error)
}

// CgroupResolver finds a container's cgroup v2 directory and id.
type CgroupResolver interface {
	Resolve(cgroupsPath string, pid uint32) (cgroups.Cgroup, error)
}

// Config is the plugin's behaviour.
type Config struct {
	// AuditDefault audits pods without the annotation (--audit-default=on).
	AuditDefault bool
	// FailClosed makes an arming failure fail the container's start instead
	// of letting it run unaudited.
	FailClosed bool
}

// armed is one container the plugin has armed.
type armed struct {
	cgroupID uint64
	sandbox  string // pod sandbox id, for RemovePodSandbox
	id       Identity
}

// Plugin holds the NRI handlers. Handlers may run concurrently (ttrpc serves
// requests in parallel) and repeat after a reconnect, so each one takes the
// lock and is idempotent.
type Plugin struct {
	cfg Config
	arm Arming
	res CgroupResolver
	log *slog.Logger

	mu    sync.Mutex
	armed map[string]armed // by container id

	resync chan struct{} // see Resync

	// Synchronize arms inline for at most syncBudget; what is left goes to
	// pending, armed by one background worker (see Synchronize).
	syncBudget     time.Duration
	pending        map[string]pendingArm // by container id
	pendingRunning bool
}

type pendingArm struct {
	pod *api.PodSandbox
	ctr *api.Container
}

// The NRI events the plugin handles; the stub subscribes to exactly these.
var (
	_ stub.SynchronizeInterface     = (*Plugin)(nil)
	_ stub.CreateContainerInterface = (*Plugin)(nil)
	_ stub.StartContainerInterface  = (*Plugin)(nil)
	_ stub.StopContainerInterface   = (*Plugin)(nil)
	_ stub.RemoveContainerInterface = (*Plugin)(nil)
	_ stub.RemovePodInterface       = (*Plugin)(nil)
)

// New returns a plugin arming through arm and finding cgroups through res.
func New(cfg Config, arm Arming, res CgroupResolver, log *slog.Logger) *Plugin {
	if log == nil {
		log = slog.Default()
	}
	return &Plugin{cfg: cfg, arm: arm, res: res, log: log, armed: map[string]armed{}, resync: make(chan struct{}, 1),
		syncBudget: time.Second, pending: map[string]pendingArm{}}
}

// Audited reports whether the containers of pod are audited, and why.
func (p *Plugin) Audited(pod *api.PodSandbox) (bool, string) {
	v, ok := pod.GetAnnotations()[AuditAnnotation]
	if !ok {
		return p.cfg.AuditDefault, "default"
	}
	b, err := strconv.ParseBool(strings.TrimSpace(v))
	if err != nil {
		p.log.Warn("ignoring pod annotation with a value that is not true or false",
			"annotation", AuditAnnotation, "value", v, "namespace", pod.GetNamespace(), "pod", pod.GetName(),
			"using", defaultWord(p.cfg.AuditDefault))
		return p.cfg.AuditDefault, "default (annotation unparsable)"
	}
	return b, "annotation " + AuditAnnotation + "=" + strconv.FormatBool(b)
}

func defaultWord(on bool) string {
	if on {
		return "audit"
	}
	return "no audit"
}

// IdentityOf is the identity an audit event of ctr carries.
func IdentityOf(pod *api.PodSandbox, ctr *api.Container) Identity {
	return Identity{
		Identity:    pods.Identity{Namespace: pod.GetNamespace(), Pod: pod.GetName(), PodUID: pod.GetUid()},
		Container:   ctr.GetName(),
		ContainerID: ctr.GetId(),
	}
}

// CreateContainer arms nothing — the container's cgroup does not exist yet
// (containerd creates the task at StartContainer) — but it checks the cgroups
// path early, so a path podscope cannot read is reported at creation, and it
// makes podscope one of the plugins that "processed" the container, which
// the default validator's required_plugins check looks for.
func (p *Plugin) CreateContainer(_ context.Context, pod *api.PodSandbox, ctr *api.Container) (*api.ContainerAdjustment, []*api.ContainerUpdate, error) {
	if ok, _ := p.Audited(pod); !ok {
		return nil, nil, nil
	}
	if _, err := cgroups.Relative(ctr.GetLinux().GetCgroupsPath()); err != nil {
		p.log.Warn("container's cgroups path is not understood; at start podscope will try the pid's cgroup instead",
			containerAttrs(pod, ctr, "err", err)...)
	}
	return nil, nil, nil
}

// StartContainer arms the audit. containerd calls it after the task exists
// (pid set, cgroup created, process still in `runc init`) and before the
// user's command runs, so arming here sees the first instruction: the work
// is done before returning, and it is a stat plus a few map updates.
func (p *Plugin) StartContainer(_ context.Context, pod *api.PodSandbox, ctr *api.Container) error {
	if ok, why := p.Audited(pod); !ok {
		p.log.Debug("container not audited", containerAttrs(pod, ctr, "why", why)...)
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.armLocked(pod, ctr); err != nil {
		p.log.Error("file-write audit NOT armed; the container runs unaudited",
			containerAttrs(pod, ctr, "err", err, "fail_closed", p.cfg.FailClosed)...)
		if p.cfg.FailClosed {
			return fmt.Errorf("podscope: refusing to start container %s/%s/%s unaudited (--fail-closed): %w",
				pod.GetNamespace(), pod.GetName(), ctr.GetName(), err)
		}
	}
	return nil
}

// armLocked resolves the container's cgroup and arms it, replacing an
// earlier arming of the same container on another cgroup.
func (p *Plugin) armLocked(pod *api.PodSandbox, ctr *api.Container) error {
	cg, err := p.res.Resolve(ctr.GetLinux().GetCgroupsPath(), ctr.GetPid())
	if err != nil {
		return fmt.Errorf("finding cgroup: %w", err)
	}
	if cg.Fallback != nil {
		p.log.Warn("cgroups path not usable, found the cgroup through the container's pid",
			containerAttrs(pod, ctr, "reason", cg.Fallback, "cgroup", cg.Dir)...)
	}
	if old, ok := p.armed[ctr.GetId()]; ok && old.cgroupID != cg.ID {
		if err := p.arm.Disarm(old.cgroupID); err != nil {
			return fmt.Errorf("disarming the container's previous cgroup %d: %w", old.cgroupID, err)
		}
		delete(p.armed, ctr.GetId())
	}
	id := IdentityOf(pod, ctr)
	cgid, err := p.arm.Arm(cg.Dir, id)
	if err != nil {
		return fmt.Errorf("arming cgroup %s: %w", cg.Dir, err)
	}
	if cgid != cg.ID {
		// The auditor and the resolver disagree on what the cgroup id is:
		// events would be attributed to nobody. Undo rather than half-arm.
		derr := p.arm.Disarm(cgid)
		return errors.Join(fmt.Errorf("auditor armed cgroup id %d for %s, but its inode is %d", cgid, cg.Dir, cg.ID), derr)
	}
	p.armed[ctr.GetId()] = armed{cgroupID: cgid, sandbox: pod.GetId(), id: id}
	p.log.Info("file-write audit armed", containerAttrs(pod, ctr, "cgroup", cg.Dir, "cgroup_id", cgid)...)
	return nil
}

// StopContainer disarms. containerd's CRI relays it to NRI only after the
// task has exited (stop signal, grace period, SIGKILL, wait), so the writes
// of a graceful shutdown are still audited; after it the cgroup only waits
// for removal, and keeping it armed would leak the entry.
func (p *Plugin) StopContainer(_ context.Context, pod *api.PodSandbox, ctr *api.Container) ([]*api.ContainerUpdate, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.pending, ctr.GetId())
	p.disarmLocked(ctr.GetId(), "container stopped")
	return nil, nil
}

// RemoveContainer disarms too: StopContainer is not delivered for a
// container that never ran or when the plugin was disconnected at the time.
func (p *Plugin) RemoveContainer(_ context.Context, pod *api.PodSandbox, ctr *api.Container) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.pending, ctr.GetId())
	p.disarmLocked(ctr.GetId(), "container removed")
	return nil
}

// RemovePodSandbox disarms every container of the pod still armed.
func (p *Plugin) RemovePodSandbox(_ context.Context, pod *api.PodSandbox) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for cid, pa := range p.pending {
		if pa.pod.GetId() == pod.GetId() {
			delete(p.pending, cid)
		}
	}
	for cid, a := range p.armed {
		if a.sandbox == pod.GetId() || (pod.GetUid() != "" && a.id.PodUID == pod.GetUid()) {
			p.disarmLocked(cid, "pod removed")
		}
	}
	return nil
}

// disarmLocked disarms a container if armed. A failure keeps the record, so
// the next event for it or the next Synchronize retries; it never fails the
// runtime's request (a container must always be able to stop).
func (p *Plugin) disarmLocked(containerID, why string) {
	a, ok := p.armed[containerID]
	if !ok {
		return
	}
	if err := p.arm.Disarm(a.cgroupID); err != nil {
		p.log.Error("disarming file-write audit failed; will retry on the next event or reconnect",
			identityAttrs(a.id, "cgroup_id", a.cgroupID, "err", err)...)
		return
	}
	delete(p.armed, containerID)
	p.log.Info("file-write audit disarmed", identityAttrs(a.id, "cgroup_id", a.cgroupID, "why", why)...)
}

// Synchronize is the full reconcile NRI sends after every (re)connect: it
// arms running audited containers that are not armed, and disarms whatever
// the pins hold that is no longer a running audited container — so a
// restart of podscope-nri, a lost connection, or installing podscope on a
// node with running pods loses nothing and leaks nothing.
//
// NRI bounds Synchronize by the same request timeout as every request (2 s
// by default) and drops a plugin that exceeds it. Arming costs about a
// millisecond per container (more in lsm_cgroup mode, one attach per LSM
// hook), so on a node with very many containers the arming that does not
// fit in syncBudget (1 s, or until 250 ms before the request's deadline)
// continues in a background worker. These containers are running already:
// nothing is gained by arming them before replying.
func (p *Plugin) Synchronize(ctx context.Context, pods []*api.PodSandbox, ctrs []*api.Container) ([]*api.ContainerUpdate, error) {
	start := time.Now()
	deadline := start.Add(p.syncBudget)
	if d, ok := ctx.Deadline(); ok && d.Add(-250*time.Millisecond).Before(deadline) {
		deadline = d.Add(-250 * time.Millisecond)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	clear(p.pending) // this snapshot supersedes an earlier one

	podByID := make(map[string]*api.PodSandbox, len(pods))
	for _, pod := range pods {
		podByID[pod.GetId()] = pod
	}
	// want: running containers of audited pods, by container id.
	want := map[string]*api.Container{}
	for _, c := range ctrs {
		pod := podByID[c.GetPodSandboxId()]
		if pod == nil || !running(c) {
			continue
		}
		if ok, _ := p.Audited(pod); ok {
			want[c.GetId()] = c
		}
	}

	// The pins are the truth: a previous podscope-nri may have armed
	// containers this process never heard of.
	pinned, err := p.arm.Armed()
	if err != nil {
		p.log.Error("reading armed cgroups from the pins failed; stale entries are not removed this time", "err", err)
	}
	for cgid, id := range pinned {
		if _, ok := want[id.ContainerID]; ok {
			if cur, seen := p.armed[id.ContainerID]; !seen || cur.cgroupID == cgid {
				p.armed[id.ContainerID] = armed{cgroupID: cgid, id: id}
				continue
			}
		}
		// Gone, no longer audited, or a second cgroup for one container.
		if err := p.arm.Disarm(cgid); err != nil {
			p.log.Error("disarming stale audit entry failed", identityAttrs(id, "cgroup_id", cgid, "err", err)...)
			continue
		}
		if cur, ok := p.armed[id.ContainerID]; ok && cur.cgroupID == cgid {
			delete(p.armed, id.ContainerID)
		}
		p.log.Info("stale file-write audit entry disarmed", identityAttrs(id, "cgroup_id", cgid)...)
		fault.Point("sync:disarmed") // between two stale entries
	}
	if err == nil {
		// Entries this process believes armed but the pins do not hold
		// (someone ran `podscopectl cleanup`): forget them, re-arm below.
		for cid, a := range p.armed {
			if _, ok := pinned[a.cgroupID]; !ok {
				delete(p.armed, cid)
			}
		}
	}
	for cid := range p.armed {
		if _, ok := want[cid]; !ok {
			p.disarmLocked(cid, "not running or not audited at synchronize")
		}
	}

	var failed int
	for cid, c := range want {
		pod := podByID[c.GetPodSandboxId()]
		if a, ok := p.armed[cid]; ok {
			a.sandbox = pod.GetId()
			a.id = IdentityOf(pod, c)
			p.armed[cid] = a
			continue
		}
		if time.Now().After(deadline) {
			p.pending[cid] = pendingArm{pod: pod, ctr: c}
			continue
		}
		if err := p.armLocked(pod, c); err != nil {
			failed++
			p.log.Error("file-write audit NOT armed for running container", containerAttrs(pod, c, "err", err)...)
		}
		fault.Point("sync:armed") // between two containers
	}
	if len(p.pending) > 0 && !p.pendingRunning {
		p.pendingRunning = true
		go p.armPending()
	}
	p.log.Info("synchronized with the runtime", "pods", len(pods), "containers", len(ctrs),
		"audited", len(want), "armed", len(p.armed), "failed", failed, "deferred", len(p.pending),
		"took", time.Since(start))
	return nil, nil
}

// armPending arms what Synchronize left, one container per lock hold so
// the runtime's events interleave; a container stopped or removed in the
// meantime has been taken out of pending by its handler.
func (p *Plugin) armPending() {
	for {
		p.mu.Lock()
		var cid string
		var pa pendingArm
		for cid, pa = range p.pending {
			break
		}
		if cid == "" {
			p.pendingRunning = false
			p.mu.Unlock()
			return
		}
		delete(p.pending, cid)
		if _, ok := p.armed[cid]; !ok {
			if err := p.armLocked(pa.pod, pa.ctr); err != nil {
				p.log.Error("file-write audit NOT armed for running container", containerAttrs(pa.pod, pa.ctr, "err", err)...)
			}
			fault.Point("sync:armed") // Synchronize's arming, deferred
		}
		p.mu.Unlock()
	}
}

func running(c *api.Container) bool {
	switch c.GetState() {
	case api.ContainerState_CONTAINER_RUNNING, api.ContainerState_CONTAINER_PAUSED:
		return true
	}
	return false
}

// ArmedContainers returns the container ids the plugin holds armed and
// their cgroup ids (for status and tests).
func (p *Plugin) ArmedContainers() map[string]uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string]uint64, len(p.armed))
	for cid, a := range p.armed {
		out[cid] = a.cgroupID
	}
	return out
}

func containerAttrs(pod *api.PodSandbox, ctr *api.Container, kv ...any) []any {
	return append([]any{"namespace", pod.GetNamespace(), "pod", pod.GetName(), "container", ctr.GetName(),
		"container_id", ctr.GetId()}, kv...)
}

func identityAttrs(id Identity, kv ...any) []any {
	return append([]any{"namespace", id.Namespace, "pod", id.Pod, "container", id.Container,
		"container_id", id.ContainerID}, kv...)
}
