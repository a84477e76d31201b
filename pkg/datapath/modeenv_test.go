package datapath

import "testing"

func TestModeFromEnv(t *testing.T) {
	for _, tc := range []struct {
		env     string
		want    Mode
		set, ok bool
	}{
		{"", ModeAuto, false, true},
		{"tc", ModeTC, true, true},
		{"tcx", ModeTCX, true, true},
		{"xdp", ModeAuto, true, false},
		{"auto", ModeAuto, true, false},
	} {
		t.Setenv("PODSCOPE_ATTACH_MODE", tc.env)
		m, set, err := ModeFromEnv()
		if m != tc.want || set != tc.set || (err == nil) != tc.ok {
			t.Errorf("PODSCOPE_ATTACH_MODE=%q: got %q set=%v err=%v, want %q set=%v ok=%v", tc.env, m, set, err, tc.want, tc.set, tc.ok)
		}
	}
}
