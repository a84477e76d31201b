package netpol

import "github.com/podscope/podscope/pkg/datapath"

// The datapath is the controller's target.
var _ Target = (*datapath.Datapath)(nil)
