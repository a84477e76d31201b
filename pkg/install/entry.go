package install

import (
	"encoding/json"

	"github.com/podscope/podscope/pkg/policy"
)

// CheckEntry validates the policy of a podscope entry with the same strict
// parser the plugin uses, so a ConfigMap with a bad policy is refused before
// it reaches the conflist (where it would fail every pod ADD on the node).
func CheckEntry(entry []byte) error {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(entry, &obj); err != nil {
		return err
	}
	raw, ok := obj["policy"]
	if !ok || string(raw) == "null" {
		return nil
	}
	_, err := policy.ParsePolicy(raw, "policy")
	return err
}
