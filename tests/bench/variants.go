package bench

// DatapathVariants lists every datapath variant in table order: podscope's
// first, then what people use instead.
func DatapathVariants(cfg *Config) []*Variant {
	vs := append([]*Variant{emptyProgVariant()}, PodscopeVariants(cfg)...)
	return append(vs, BaselineVariants(cfg.Quick)...)
}
