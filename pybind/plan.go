package pybind

import (
	"encoding/json"
	"fmt"

	"github.com/npsfuse/npsfuse/gocore/merge"
	"github.com/npsfuse/npsfuse/gocore/plan"
)

// PlanMerge matches a merge's inputs with gocore/plan, the rule of
// `npsfuse merge` and the daemon too. request is JSON: "base" and "models"
// (plan.Input), "options" (plan.Options) and "differ", the integer tensors
// (entries marked verify) whose values the caller found to differ, as
// {"tensor", "model"}. The result is the plan as JSON with "error", the
// message listing the problems ("" when the inputs fit together).
func PlanMerge(request string) (out string, err error) {
	defer guard(&err)
	var q struct {
		Base    plan.Input   `json:"base"`
		Models  []plan.Input `json:"models"`
		Options plan.Options `json:"options"`
		Differ  []struct {
			Tensor string `json:"tensor"`
			Model  int    `json:"model"`
		} `json:"differ"`
	}
	if err := decodeStrict(merge.ErrInput, "plan request", request, &q); err != nil {
		return "", err
	}
	p, err := plan.Make(q.Base, q.Models, q.Options)
	if err != nil {
		return "", err
	}
	for _, d := range q.Differ {
		if d.Model < 0 || d.Model >= len(q.Models) {
			return "", fmt.Errorf("%w: plan request: model %d of %d", merge.ErrInput, d.Model, len(q.Models))
		}
		p.Differ(d.Tensor, d.Model)
	}
	resp := struct {
		*plan.Plan
		Error string `json:"error"`
	}{Plan: p}
	if len(p.Problems) > 0 {
		resp.Error = p.Message()
	}
	b, err := json.Marshal(resp)
	return string(b), err
}
