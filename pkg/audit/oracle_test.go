package audit

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/podscope/podscope/pkg/pods"
	"github.com/podscope/podscope/pkg/testenv"
)

// straceOracle (a subtest of TestAudit) checks the audit against an independent oracle: strace
// following the same busybox workloads, one as root and one as nobody
// (whose writes into root's files and directories the kernel refuses).
// Every write-class call strace shows as succeeded, or refused with
// EACCES/EPERM, must be exactly one operation of the audit's events — same
// op, path, target and uid — and nothing else may be reported. In the
// modes that cannot see refusals (see Mode.SeesRefusals), a refused open is
// not reported and any other refused operation is reported as attempted.
func straceOracle(t *testing.T, h *harness) {
	strace := testenv.RequireTool(t, "strace")
	busybox := testenv.RequireTool(t, "busybox")
	cg := h.cgroup(t)
	cgid, err := h.a.Arm(cg, Identity{Identity: pods.Identity{Pod: "oracle"}})
	if err != nil {
		t.Fatal(err)
	}
	defer h.a.Disarm(cgid)
	d := shmDir(t)
	for _, p := range []string{d, filepath.Join(d, "rootdir")} {
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, 0o755)
	}
	for _, f := range []string{"rootfile", "rootdir/kept", "secret"} {
		if err := os.WriteFile(filepath.Join(d, f), []byte("x\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.Chmod(filepath.Join(d, "secret"), 0o600)
	scripts := []struct {
		uid    int
		script string
	}{
		{0, `cd ` + d + ` && echo a > f1 && echo b >> f1 && mkdir d1 && touch d1/x && mv d1/x d1/y &&
ln d1/y l1 && ln -s f1 s1 && chmod 600 f1 && chown 0:0 f1 && truncate -s 0 f1 && mknod p1 p &&
rm l1 s1 p1 && rm -r d1 && echo c > f2 && echo d > f2 && chmod 640 f2 && chmod 640 f2 && mkdir -p rootdir/sub && rmdir rootdir/sub`},
		{65534, `cd ` + d + `; echo x >> rootfile; echo x > rootdir/new; chmod 777 rootfile; mkdir rootdir/nd;
rm rootdir/kept; mv rootfile rootdir/moved; ln -s x rootdir/sl; truncate -s 0 rootfile; cat secret > /dev/null; touch secret; true`},
	}
	outDir := shmDir(t)
	os.Chmod(outDir, 0o777) // strace runs as the workload's user
	for i, sc := range scripts {
		out := filepath.Join(outDir, fmt.Sprintf("strace-%d.out", i))
		args := []string{strace, "-f", "-qq", "-y", "-o", out, "-e", "trace=" + oracleSyscalls, busybox, "sh", "-c", sc.script}
		if err := runIn(cg, uint32(sc.uid), args); err != nil {
			t.Fatalf("workload %d: %v", i, err)
		}
		calls, pids, err := parseStrace(out, d)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]int{}
		refusedOpen, refusedOther := 0, 0
		for _, c := range calls {
			c.uid = uint32(sc.uid)
			if c.denied && !h.a.Mode().SeesRefusals() {
				if c.op == "open" {
					refusedOpen++
					continue // refused before the LSM hook: not seen
				}
				refusedOther++
				c.denied = false // seen at the hook as an attempt
			}
			want[c.key()]++
		}
		total := 0
		for _, n := range want {
			total += n
		}
		gotCount := func() (map[string]int, int) {
			got, n := map[string]int{}, 0
			for _, ev := range h.take(func(ev Event) bool { return ev.CgroupID == cgid && pids[ev.PID] }) {
				// strace cannot tell an open that created from one that did
				// not: both are the class "open" here.
				op := ev.Op
				if op == "create" || op == "open_write" {
					op = "open"
				}
				got[oracleCall{op: op, path: ev.Path, target: ev.Target, uid: ev.UID, denied: ev.Denied}.key()] += int(ev.Count)
				n += int(ev.Count)
			}
			return got, n
		}
		h.waitUntil(func() bool { _, n := gotCount(); return n >= total })
		got, n := gotCount()
		var diff []string
		for k, c := range want {
			if got[k] != c {
				diff = append(diff, fmt.Sprintf("%s: strace %d, audit %d", k, c, got[k]))
			}
		}
		for k, c := range got {
			if _, ok := want[k]; !ok {
				diff = append(diff, fmt.Sprintf("%s: strace 0, audit %d", k, c))
			}
		}
		sort.Strings(diff)
		denied := 0
		for _, c := range calls {
			if c.denied {
				denied++
			}
		}
		t.Logf("mode %s, workload as uid %d: strace %d write-class calls (%d refused), audit %d operations; refused and not seen by this mode: %d opens; refused and reported as attempts: %d",
			h.a.Mode(), sc.uid, len(calls), denied, n, refusedOpen, refusedOther)
		if len(diff) > 0 {
			t.Errorf("audit vs strace, workload as uid %d:\n%s", sc.uid, strings.Join(diff, "\n"))
		}
		if sc.uid != 0 && denied == 0 {
			t.Errorf("the nobody workload had no refused call: the oracle checks nothing of refusals")
		}
	}
}

const oracleSyscalls = "open,openat,openat2,creat,truncate,ftruncate,unlink,unlinkat,rmdir,rename,renameat,renameat2," +
	"chmod,fchmod,fchmodat,chown,fchown,lchown,fchownat,mkdir,mkdirat,link,linkat,symlink,symlinkat,mknod,mknodat"

// runIn runs argv as uid (and gid) born in cgroup cg.
func runIn(cg string, uid uint32, argv []string) error {
	cgfd, err := unix.Open(cg, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	defer unix.Close(cgfd)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: cgfd}
	if uid != 0 {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uid, Gid: uid}
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%v: %s", err, out)
	}
	return nil
}

type oracleCall struct {
	op, path, target string
	uid              uint32
	denied           bool
}

func (c oracleCall) key() string {
	return fmt.Sprintf("%s %s -> %q uid %d denied %v", c.op, c.path, c.target, c.uid, c.denied)
}

var straceLine = regexp.MustCompile(`^(\d+) +(\w+)\((.*)\) += (-?\d+|\?)(?: (\w+))?`)

// parseStrace turns strace -f -y output into the write-class calls that
// succeeded or were refused (EACCES/EPERM), with paths made absolute
// against cwd (the workloads cd there first and stay), and the pids seen.
func parseStrace(file, cwd string) ([]oracleCall, map[uint32]bool, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	var out []oracleCall
	pids := map[uint32]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		m := straceLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		pid, _ := strconv.Atoi(m[1])
		pids[uint32(pid)] = true
		name, args, ret, errno := m[2], splitArgs(m[3]), m[4], m[5]
		denied := false
		if strings.HasPrefix(ret, "-") {
			if errno != "EACCES" && errno != "EPERM" {
				continue
			}
			denied = true
		}
		abs := func(dirArg, p string) string {
			p = strings.Trim(p, `"`)
			if strings.HasPrefix(p, "/") {
				return p
			}
			dir := cwd
			if dirArg != "" && dirArg != "AT_FDCWD" {
				if i := strings.Index(dirArg, "<"); i >= 0 {
					dir = strings.TrimSuffix(dirArg[i+1:], ">")
				}
			}
			return filepath.Join(dir, p)
		}
		fdPath := func(a string) string {
			if i := strings.Index(a, "<"); i >= 0 {
				return strings.TrimSuffix(a[i+1:], ">")
			}
			return a
		}
		c := oracleCall{denied: denied}
		switch name {
		case "open", "creat":
			if name == "open" && !writeFlags(args[1]) {
				continue
			}
			c.op, c.path = "open", abs("", args[0])
		case "openat", "openat2":
			if !writeFlags(args[2]) {
				continue
			}
			c.op, c.path = "open", abs(args[0], args[1])
		case "truncate":
			c.op, c.path = "truncate", abs("", args[0])
		case "ftruncate":
			c.op, c.path = "truncate", fdPath(args[0])
		case "unlink":
			c.op, c.path = "unlink", abs("", args[0])
		case "unlinkat":
			c.op, c.path = "unlink", abs(args[0], args[1])
			if strings.Contains(args[2], "AT_REMOVEDIR") {
				c.op = "rmdir"
			}
		case "rmdir":
			c.op, c.path = "rmdir", abs("", args[0])
		case "rename":
			c.op, c.path, c.target = "rename", abs("", args[0]), abs("", args[1])
		case "renameat", "renameat2":
			c.op, c.path, c.target = "rename", abs(args[0], args[1]), abs(args[2], args[3])
		case "chmod":
			c.op, c.path = "chmod", abs("", args[0])
		case "fchmod":
			c.op, c.path = "chmod", fdPath(args[0])
		case "fchmodat":
			c.op, c.path = "chmod", abs(args[0], args[1])
		case "chown", "lchown":
			c.op, c.path = "chown", abs("", args[0])
		case "fchown":
			c.op, c.path = "chown", fdPath(args[0])
		case "fchownat":
			c.op, c.path = "chown", abs(args[0], args[1])
		case "mkdir":
			c.op, c.path = "mkdir", abs("", args[0])
		case "mkdirat":
			c.op, c.path = "mkdir", abs(args[0], args[1])
		case "link":
			c.op, c.path, c.target = "link", abs("", args[1]), abs("", args[0])
		case "linkat":
			c.op, c.path, c.target = "link", abs(args[2], args[3]), abs(args[0], args[1])
		case "symlink":
			c.op, c.path, c.target = "symlink", abs("", args[1]), strings.Trim(args[0], `"`)
		case "symlinkat":
			c.op, c.path, c.target = "symlink", abs(args[1], args[2]), strings.Trim(args[0], `"`)
		case "mknod": // a create, like an open that creates
			c.op, c.path = "open", abs("", args[0])
		case "mknodat":
			c.op, c.path = "open", abs(args[0], args[1])
		default:
			continue
		}
		out = append(out, c)
	}
	return out, pids, sc.Err()
}

func writeFlags(s string) bool {
	for _, f := range []string{"O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC"} {
		if strings.Contains(s, f) {
			return true
		}
	}
	return false
}

// splitArgs splits strace's argument list at top-level commas.
func splitArgs(s string) []string {
	var out []string
	depth, inq, start := 0, false, 0
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\' && inq:
			i++
		case c == '"':
			inq = !inq
		case inq:
		case c == '{' || c == '[' || c == '(' || c == '<':
			depth++
		case c == '}' || c == ']' || c == ')' || c == '>':
			depth--
		case c == ',' && depth == 0:
			out = append(out, strings.TrimSpace(s[start:i]))
			start = i + 1
		}
	}
	out = append(out, strings.TrimSpace(s[start:]))
	for len(out) < 5 {
		out = append(out, "")
	}
	return out
}
