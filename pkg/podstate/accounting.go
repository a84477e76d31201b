package podstate

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/podscope/podscope/pkg/datapath"
	"github.com/podscope/podscope/pkg/pods"
)

// AccountingFile is the name of the finished-pods log in the state dir.
const AccountingFile = "accounting.jsonl"

// Record is one line of accounting.jsonl: a pod's identity and its final
// counters, written once when the pod goes (DEL, GC or the reaper).
type Record struct {
	Time   time.Time `json:"time"`
	Reason string    `json:"reason"` // "del", "gc", "reaped: <why>", "cleanup"
	pods.Identity
	ContainerID   string         `json:"containerID"`
	Interface     string         `json:"interface"`
	HostInterface string         `json:"hostInterface"`
	IPs           []netip.Prefix `json:"ips"`
	Mode          string         `json:"mode"`
	Network       string         `json:"network,omitempty"`
	PodID         uint32         `json:"podID"`
	AttachedAt    time.Time      `json:"attachedAt"`
	DetachedAt    time.Time      `json:"detachedAt"`
	// The final counters: rxBytes … dropsIngress, and the bytes of the
	// dropped packets (dropBytesEgress, dropBytesIngress).
	datapath.Counters
	// CountersError is set when the counters could not be read (pins gone):
	// the identity is still logged so the pod is not silently lost.
	CountersError string `json:"countersError,omitempty"`
}

// NewRecord is the accounting line of pod p, going for reason, with its
// final counters c (or cerr when they could not be read).
func NewRecord(p pods.Pod, reason string, c datapath.Counters, cerr error) Record {
	now := time.Now().UTC()
	r := Record{
		Time: now, Reason: reason, Identity: p.Identity(),
		ContainerID: p.ContainerID, Interface: p.Interface, HostInterface: p.HostInterface,
		IPs: p.IPs, Mode: string(p.Mode), Network: p.Network, PodID: uint32(p.ID), AttachedAt: p.AttachedAt, DetachedAt: now,
		Counters: c,
	}
	if cerr != nil {
		r.CountersError = cerr.Error()
	}
	return r
}

// Append writes r as one line of the accounting log in the state directory
// with a single write(2) on an O_APPEND file and syncs it: the line is
// complete before the pod's map entries are removed.
func Append(stateDir string, r Record) error {
	line, err := json.Marshal(r)
	if err != nil {
		return err
	}
	line = append(line, '\n')
	p := filepath.Join(dirOr(stateDir), AccountingFile)
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("opening accounting log: %w", err)
	}
	if _, err := f.Write(line); err != nil {
		f.Close()
		return fmt.Errorf("writing accounting log %s: %w", p, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("syncing accounting log %s: %w", p, err)
	}
	return f.Close()
}

// logSize is the accounting log's size (0 when it does not exist yet).
func logSize(stateDir string) (int64, error) {
	st, err := os.Stat(filepath.Join(dirOr(stateDir), AccountingFile))
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("accounting log: %w", err)
	}
	return st.Size(), nil
}

// Logged reports whether the accounting log holds, at or after offset, the
// line of this attachment of pod p (same pod ID, container, interface and
// attach time).
func Logged(stateDir string, offset int64, p pods.Pod) (bool, error) {
	f, err := os.Open(filepath.Join(dirOr(stateDir), AccountingFile))
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("accounting log: %w", err)
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return false, fmt.Errorf("accounting log: %w", err)
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		var r struct {
			PodID       uint32    `json:"podID"`
			ContainerID string    `json:"containerID"`
			Interface   string    `json:"interface"`
			AttachedAt  time.Time `json:"attachedAt"`
		}
		if json.Unmarshal(sc.Bytes(), &r) != nil {
			continue // a torn line of a writer killed mid-write
		}
		if r.PodID == uint32(p.ID) && r.ContainerID == p.ContainerID && r.Interface == p.Interface && r.AttachedAt.Equal(p.AttachedAt) {
			return true, nil
		}
	}
	if err := sc.Err(); err != nil {
		return false, fmt.Errorf("accounting log: %w", err)
	}
	return false, nil
}
