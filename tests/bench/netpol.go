package bench

// The NetworkPolicy rows (make bench-netpol, hack/k8s/netpol.sh bench): the
// load tool's TCP_RR, TCP_CRR and UDP between two pods of the cluster
// suite's node with no policy, with podscope enforcing N NetworkPolicies and
// with kube-network-policies enforcing the same, plus the time from an API
// update to enforcement. The pods run this binary: `serve` in the server,
// `load` and `flip` in the client; `netpol-report` folds the results.

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// FlipResult is when a pod's new connections to a target first showed the
// wanted outcome.
type FlipResult struct {
	Want string `json:"want"` // open or closed
	// AtUnixNano is the start of the first attempt of the run of Confirm
	// attempts that all had the wanted outcome.
	AtUnixNano int64 `json:"at_unix_nano"`
	Attempts   int   `json:"attempts"`
}

// connectOnce opens and closes one TCP connection within timeout: true if
// the handshake completed (a new connection each time: its first packet is
// what a NetworkPolicy enforcer judges).
func connectOnce(ap netip.AddrPort, timeout time.Duration) (bool, error) {
	fd, err := unix.Socket(family(ap.Addr()), unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return false, err
	}
	defer unix.Close(fd)
	err = unix.Connect(fd, sockaddr(ap))
	if err == nil {
		return true, nil
	}
	if !errors.Is(err, unix.EINPROGRESS) {
		return false, nil // refused, unreachable: not open
	}
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return false, nil
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		n, err := unix.Poll(pfd, int(left.Milliseconds())+1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return false, err
		}
		if n == 0 {
			return false, nil
		}
		soerr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
		return err == nil && soerr == 0, nil
	}
}

// Flip connects to target until confirm consecutive attempts have the
// wanted outcome (open: the handshake completes; closed: it does not within
// timeout) or until limit passes.
func Flip(target netip.AddrPort, wantOpen bool, timeout time.Duration, confirm int, limit time.Duration) (FlipResult, error) {
	r := FlipResult{Want: "closed"}
	if wantOpen {
		r.Want = "open"
	}
	end := time.Now().Add(limit)
	run := 0
	var first time.Time
	for time.Now().Before(end) {
		t := time.Now()
		ok, err := connectOnce(target, timeout)
		if err != nil {
			return r, err
		}
		r.Attempts++
		if ok != wantOpen {
			run = 0
			if ok {
				time.Sleep(5 * time.Millisecond)
			}
			continue
		}
		if run == 0 {
			first = t
		}
		if run++; run >= confirm {
			r.AtUnixNano = first.UnixNano()
			return r, nil
		}
		if ok {
			time.Sleep(5 * time.Millisecond)
		}
	}
	return r, fmt.Errorf("%s not %s within %s (%d attempts)", target, r.Want, limit, r.Attempts)
}

func cmdFlip(args []string) error {
	fs := flag.NewFlagSet("flip", flag.ContinueOnError)
	target := fs.String("target", "", "ip:port to connect to")
	want := fs.String("want", "open", "open or closed")
	timeout := fs.Duration("timeout", 100*time.Millisecond, "an attempt without a handshake in this time counts as closed")
	confirm := fs.Int("confirm", 3, "consecutive attempts with the wanted outcome")
	limit := fs.Duration("limit", 30*time.Second, "give up after")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ap, err := netip.ParseAddrPort(*target)
	if err != nil {
		return fmt.Errorf("--target: %w", err)
	}
	if *want != "open" && *want != "closed" {
		return fmt.Errorf("--want %q: open or closed", *want)
	}
	r, err := Flip(ap, *want == "open", *timeout, *confirm, *limit)
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(r)
}

// NetpolRow is one configuration of the NetworkPolicy rows.
type NetpolRow struct {
	Name string
	// NA, when set, is why the row could not be measured (DIR/na.txt).
	NA string
	// Samples of each load mode ("rr", "crr", "udp") in the order they were
	// measured, one per round; Value is their median.
	Samples map[string][]float64
	Value   map[string]float64
	// Ratio of each mode to the baseline row, paired per round (see
	// NetpolTable); zero N when this is the baseline or nothing was paired.
	Ratio map[string]Summary
	// Update-to-enforcement latency in seconds: p50, p99 over Samples.
	LatencyP50, LatencyP99 float64
	LatencySamples         int
}

// NetpolModes are the load modes of the rows, in table order.
var NetpolModes = []string{"rr", "crr", "udp"}

// ReadNetpolRow reads DIR/<mode>.jsonl (LoadResult per line, one per
// round), DIR/latency.txt (seconds per line) and DIR/na.txt (why the row
// could not run) of one row.
func ReadNetpolRow(dir, name string) (NetpolRow, error) {
	row := NetpolRow{Name: name, Samples: map[string][]float64{}, Value: map[string]float64{},
		Ratio: map[string]Summary{}, LatencyP50: math.NaN(), LatencyP99: math.NaN()}
	if b, err := os.ReadFile(filepath.Join(dir, "na.txt")); err == nil {
		row.NA = strings.Join(strings.Fields(string(b)), " ")
	} else if !errors.Is(err, os.ErrNotExist) {
		return row, err
	}
	for _, m := range NetpolModes {
		row.Value[m] = math.NaN()
		f, err := os.Open(filepath.Join(dir, m+".jsonl"))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return row, err
		}
		var xs []float64
		dec := json.NewDecoder(f)
		for {
			var r LoadResult
			if err := dec.Decode(&r); err == io.EOF {
				break
			} else if err != nil {
				f.Close()
				return row, fmt.Errorf("%s/%s.jsonl: %w", dir, m, err)
			}
			xs = append(xs, r.Value)
		}
		f.Close()
		row.Samples[m], row.Value[m] = xs, Median(xs)
	}
	f, err := os.Open(filepath.Join(dir, "latency.txt"))
	if errors.Is(err, os.ErrNotExist) {
		return row, nil
	}
	if err != nil {
		return row, err
	}
	defer f.Close()
	var lat []float64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		s := strings.TrimSpace(sc.Text())
		if s == "" {
			continue
		}
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return row, fmt.Errorf("%s/latency.txt: %w", dir, err)
		}
		lat = append(lat, v)
	}
	row.LatencySamples = len(lat)
	if len(lat) > 0 {
		row.LatencyP50, row.LatencyP99 = Percentile(lat, 50), Percentile(lat, 99)
	}
	return row, sc.Err()
}

// PairNetpolRows sets each later row's Ratio against the first row (the
// baseline): the rounds alternate baseline and variant (A B A B … A), so
// variant sample i is divided by the mean of baseline samples i and i+1
// (PairedRatios).
func PairNetpolRows(rows []NetpolRow) {
	if len(rows) == 0 {
		return
	}
	base := rows[0]
	for i := 1; i < len(rows); i++ {
		for _, m := range NetpolModes {
			if xs := rows[i].Samples[m]; len(xs) > 0 {
				rows[i].Ratio[m] = Summarize(PairedRatios(base.Samples[m], xs))
			}
		}
	}
}

// NetpolTable renders the rows as markdown; the first row is the baseline
// of the ratios (PairNetpolRows).
func NetpolTable(rows []NetpolRow) string {
	PairNetpolRows(rows)
	var b strings.Builder
	b.WriteString("| configuration | TCP_RR tx/s | TCP_CRR conn/s | UDP pkt/s | update→enforced p50 / p99 |\n")
	b.WriteString("|---|---|---|---|---|\n")
	cell := func(r NetpolRow, m string) string {
		v := r.Value[m]
		if math.IsNaN(v) {
			return "n/a"
		}
		s := fmt.Sprintf("%.0f", v)
		if q := r.Ratio[m]; q.N > 0 {
			s += fmt.Sprintf(" (ratio %.3f, %.3f–%.3f)", q.Median, q.Min, q.Max)
		}
		return s
	}
	for _, r := range rows {
		if r.NA != "" {
			fmt.Fprintf(&b, "| %s | cannot run here: %s | | | |\n", r.Name, strings.ReplaceAll(r.NA, "|", "\\|"))
			continue
		}
		lat := "–"
		if r.LatencySamples > 0 {
			lat = fmt.Sprintf("%.0f ms / %.0f ms (n=%d)", r.LatencyP50*1000, r.LatencyP99*1000, r.LatencySamples)
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", r.Name, cell(r, "rr"), cell(r, "crr"), cell(r, "udp"), lat)
	}
	if len(rows) > 1 {
		b.WriteString("\nValues: medians over the rounds. Ratio: to the first row, per round against the mean of the two baseline runs around it (A B A B … A); median, min–max over the rounds.\n")
	}
	return b.String()
}

// cmdNetpolReport: podscope-bench netpol-report --in DIR NAME=SUBDIR...
func cmdNetpolReport(args []string) error {
	fs := flag.NewFlagSet("netpol-report", flag.ContinueOnError)
	in := fs.String("in", "bench/out/netpol-bench", "directory of the rows")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var rows []NetpolRow
	for _, a := range fs.Args() {
		name, sub, ok := strings.Cut(a, "=")
		if !ok {
			return fmt.Errorf("%q: want NAME=SUBDIR", a)
		}
		r, err := ReadNetpolRow(filepath.Join(*in, sub), name)
		if err != nil {
			return err
		}
		rows = append(rows, r)
	}
	fmt.Print(NetpolTable(rows))
	return nil
}
