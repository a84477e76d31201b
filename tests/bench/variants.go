package bench

// DatapathVariants lists every datapath variant in table order: podscope's
// first, then what people use instead.
func DatapathVariants(cfg *Config) []*Variant {
	return append(PodscopeVariants(cfg), BaselineVariants(cfg.Quick)...)
}
