package pybind

import "context"

// Merge runs a merge method over nTensors tensors of nModels models: the
// pairs at arrays/schemas are tensor-major (for each tensor the base, the
// nModels fine-tuned versions, the nModels statistics when params'
// "statistics" flags the tensor (fisher, regmean), then the output buffer,
// written in place); the base's field metadata carries the shape and the
// transposed flag. params is a JSON object (see mergeParams). It returns
// the method's report (merge.RunReport) as a JSON object. Errors caused by
// the input start with "invalid merge input" or "bad tensor".
func Merge(method, params string, nTensors, nModels, arrays, schemas int) (report string, err error) {
	return mergeWith(context.Background(), method, params, nTensors, nModels, arrays, schemas)
}

// MergeJob is Merge that CancelJob(jobID) stops: the engine checks between
// chunks of about 16 Ki entries and between preparation steps, and returns
// an error of kind "cancelled"; the outputs are then partly written and
// must be discarded. Python calls it from a worker thread so that Ctrl-C
// reaches the interpreter (npsfuse._jobs); its job ids are negative, those
// of MergeCheckpoints positive, as both share one table.
func MergeJob(jobID int, method, params string, nTensors, nModels, arrays, schemas int) (report string, err error) {
	defer guard(&err)
	ctx, done := startJob(jobID)
	defer done()
	return mergeWith(ctx, method, params, nTensors, nModels, arrays, schemas)
}
