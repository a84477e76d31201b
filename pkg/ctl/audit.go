package ctl

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/podscope/podscope/pkg/audit"
)

// AuditEvent is one line of the audit log podscope-nri writes (docs/design.md
// "Audit event"): the writer's own type, so reader and writer cannot drift.
type AuditEvent = audit.Event

type auditOpts struct {
	path   string
	pod    string
	follow bool
	json   bool
	// poll is how often --follow looks for new lines; stop ends it (tests).
	poll time.Duration
	stop <-chan struct{}
}

func (o auditOpts) match(e AuditEvent) bool {
	if o.pod == "" {
		return true
	}
	ns, name, ok := splitRef(o.pod)
	if !ok {
		return e.ContainerID == o.pod || e.PodUID == o.pod
	}
	return e.Namespace == ns && e.Pod == name
}

func runAudit(w io.Writer, o auditOpts) error {
	f, err := os.Open(o.path)
	if errors.Is(err, os.ErrNotExist) {
		return noStateError("audit log %s does not exist: is podscope-nri running (its --audit-log), or pass --log PATH", o.path)
	}
	if err != nil {
		return err
	}
	defer f.Close()
	if o.poll == 0 {
		o.poll = 250 * time.Millisecond
	}
	var tw *tabwriter.Writer
	if !o.json {
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "TIME\tPOD\tCONTAINER\tPID\tCOMM\tUID\tOP\tPATH\tDENIED\tCOUNT")
	}
	enc := json.NewEncoder(w)
	r := bufio.NewReader(f)
	var partial string
	bad := 0
	for {
		line, err := r.ReadString('\n')
		if err == io.EOF {
			partial += line // a line still being written
			if tw != nil {
				tw.Flush()
			}
			if !o.follow {
				break
			}
			select {
			case <-o.stop:
				return nil
			case <-time.After(o.poll):
			}
			continue
		}
		if err != nil {
			return err
		}
		line, partial = partial+line, ""
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		var e AuditEvent
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			bad++
			continue
		}
		if !o.match(e) {
			continue
		}
		if o.json {
			if err := enc.Encode(e); err != nil {
				return err
			}
			continue
		}
		count := e.Count
		if count == 0 {
			count = 1
		}
		path := e.Path
		if e.Target != "" {
			path += " -> " + e.Target
		}
		if e.Value != "" {
			path += " = " + strconv.Quote(e.Value)
		}
		fmt.Fprintf(tw, "%s\t%s/%s\t%s\t%d\t%s\t%d\t%s\t%s\t%s\t%d\n", e.Time.Local().Format(time.RFC3339), e.Namespace, e.Pod,
			e.Container, e.PID, e.Comm, e.UID, e.Op, path, yesNo(e.Denied), count)
	}
	if bad > 0 {
		return fmt.Errorf("%d line(s) of %s are not audit events (skipped)", bad, o.path)
	}
	return nil
}
