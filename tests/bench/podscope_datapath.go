package bench

// PodscopeVariants are podscope's own datapath variants.
func PodscopeVariants(cfg *Config) []*Variant {
	na := "pkg/datapath has not landed yet"
	return []*Variant{
		{Name: "podscope, accounting only", NA: na},
		{Name: "podscope, 10 policy cidrs", NA: na},
		{Name: "podscope, 1,000 policy cidrs", NA: na},
		{Name: "podscope, 100,000 policy cidrs", NA: na},
	}
}

// cleanupPodscopePins detaches and unpins what podscope left under root
// (the datapath's Cleanup once it exists; removing the dir does the rest).
func cleanupPodscopePins(root string) error { return nil }
