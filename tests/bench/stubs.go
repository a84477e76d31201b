package bench

func RunAudit(cfg *Config) (*Section, error) { return &Section{Name: "Audit"}, nil }
func cmdAuditLoop(args []string) error       { return nil }
func Goals(r *Results) []Goal                { return nil }
func Plot(r *Results, path string) error     { return nil }
