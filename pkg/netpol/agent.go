package netpol

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/podscope/podscope/pkg/datapath"
	"github.com/podscope/podscope/pkg/pins"
	"github.com/podscope/podscope/pkg/pods"
)

// AgentConfig is podscope-nri's --networkpolicy side.
type AgentConfig struct {
	Root       pins.Root
	NodeName   string // --node-name, default $NODE_NAME
	Kubeconfig string // --kubeconfig, "" = in-cluster
	Log        *slog.Logger
	// Retry is the wait before trying again after a failure to start
	// (API unreachable, datapath not loadable), default 30s.
	Retry time.Duration
}

// Agent runs the controller in the node daemon: it checks that the kernel
// can enforce, attaches the NetworkPolicy hooks, connects to the API and
// runs the controller. Whatever fails, it reports why (Status) and the
// daemon's other jobs go on.
type Agent struct {
	cfg  AgentConfig
	mu   sync.Mutex
	why  string // why nothing is enforced, "" while it is
	ctrl *Controller
}

// AgentStatus is the controller's status plus why it is not running.
type AgentStatus struct {
	Status
	Running bool   `json:"running"`
	Reason  string `json:"reason,omitempty"` // why NetworkPolicies are not enforced
}

// NewAgent checks the configuration.
func NewAgent(cfg AgentConfig) (*Agent, error) {
	if cfg.NodeName == "" {
		return nil, errors.New("--networkpolicy needs the node's name: --node-name or $NODE_NAME (the downward API's spec.nodeName)")
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Retry <= 0 {
		cfg.Retry = 30 * time.Second
	}
	cfg.Log = cfg.Log.With("component", "networkpolicy")
	return &Agent{cfg: cfg, why: "starting"}, nil
}

// Status is what metrics and the status file show.
func (a *Agent) Status() AgentStatus {
	a.mu.Lock()
	ctrl, why := a.ctrl, a.why
	a.mu.Unlock()
	s := AgentStatus{Reason: why}
	if ctrl != nil {
		s.Status = ctrl.Status()
		s.Running = true
	}
	s.Node = a.cfg.NodeName
	return s
}

func (a *Agent) setWhy(why string, ctrl *Controller) {
	a.mu.Lock()
	a.why, a.ctrl = why, ctrl
	a.mu.Unlock()
}

// Run enforces until ctx ends. It returns nothing: failures are reported
// and retried (a kernel that cannot enforce is reported once and not
// retried).
func (a *Agent) Run(ctx context.Context) {
	for {
		err := a.runOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		a.setWhy(err.Error(), nil)
		if errors.Is(err, datapath.ErrNoNetfilterLink) || errors.Is(err, datapath.ErrNoConntrack) {
			a.cfg.Log.Error("NetworkPolicies are NOT enforced on this node: the kernel cannot (the daemon's other jobs go on)", "err", err)
			return
		}
		a.cfg.Log.Error("NetworkPolicies are NOT enforced on this node (retrying)", "err", err, "retry_in", a.cfg.Retry)
		select {
		case <-ctx.Done():
			return
		case <-time.After(a.cfg.Retry):
		}
	}
}

func (a *Agent) runOnce(ctx context.Context) error {
	if err := datapath.NetworkPolicySupported(); err != nil {
		return fmt.Errorf("NetworkPolicy not supported here: %w", err)
	}
	client, err := Client(a.cfg.Kubeconfig)
	if err != nil {
		return err
	}
	if err := datapath.AttachNetworkPolicyHooks(a.cfg.Root); err != nil {
		return fmt.Errorf("attaching the NetworkPolicy hooks: %w", err)
	}
	dp, err := datapath.Open(a.cfg.Root)
	if err != nil {
		return fmt.Errorf("opening the datapath: %w", err)
	}
	defer dp.Close()
	ctrl, err := New(Config{NodeName: a.cfg.NodeName, Client: client, Target: dp, Local: RegistryPods(a.cfg.Root), Log: a.cfg.Log})
	if err != nil {
		return err
	}
	a.setWhy("", ctrl)
	a.cfg.Log.Info("enforcing NetworkPolicies", "node", a.cfg.NodeName)
	if err := ctrl.Run(ctx); err != nil {
		return err
	}
	if ctx.Err() == nil {
		return errors.New("controller stopped")
	}
	return nil
}

// Client is a clientset from kubeconfig, or the in-cluster configuration
// when kubeconfig is "".
func Client(kubeconfig string) (kubernetes.Interface, error) {
	var cfg *rest.Config
	var err error
	if kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	} else {
		cfg, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("Kubernetes API configuration (--kubeconfig or in-cluster): %w", err)
	}
	cfg.UserAgent = "podscope-nri/networkpolicy"
	return kubernetes.NewForConfig(cfg)
}

// RegistryPods lists the pods the CNI plugin attached, from the pinned
// registry under root (none attached yet: an empty list).
func RegistryPods(root pins.Root) func() ([]pods.Pod, error) {
	return func() ([]pods.Pod, error) {
		reg, err := pods.OpenPinnedRegistry(root)
		if errors.Is(err, pods.ErrNoRegistry) || errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		defer reg.Close()
		return reg.List()
	}
}
