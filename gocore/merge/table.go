package merge

// The method table: one row per method, naming the parameters it reads
// (their declarations are in spec.go) and its method-dependent defaults.
// A test checks it against the kernels' registry, so a method cannot be
// added without its row, nor a row without its kernel.
func init() {
	ties := []string{"weight", "density", "lambda", "normalize", "scope", "rescale"}
	random := []string{"weight", "density", "lambda", "normalize", "seed", "rescale"}
	subspace := []string{"weight", "lambda"}
	for _, s := range []MethodSpec{
		{Name: "linear", Doc: "Weighted average of the models, Σ w_t θ_t / Σ w_t; a base not among the models is averaged in as the last model (as mergekit).",
			Params: []string{"weight", "normalize"}, Normalize: true, Mergekit: true, BaseAsModel: true},
		{Name: "task_arithmetic", Doc: "θ₀ + λ·Σ w_t τ_t (Ilharco et al., 2023).",
			Params: []string{"weight", "lambda", "normalize", "rescale"}, Mergekit: true},
		{Name: "ties", Doc: "Top-k trim, sign election, disjoint mean (Yadav et al., 2023).",
			Params: ties, Normalize: true, Mergekit: true},
		{Name: "magnitude_prune", Doc: "Top-k trim of each task vector, then the weighted sum.",
			Params: ties},
		{Name: "dare_linear", Doc: "DARE: random drop with rescale, then the weighted sum (Yu et al., 2024).",
			Params: random, Rescale: true, Mergekit: true},
		{Name: "dare_ties", Doc: "DARE's random drop, then TIES' sign election and disjoint mean.",
			Params: random, Rescale: true, Mergekit: true},
		{Name: "breadcrumbs", Doc: "Drop the largest γ and keep the next density fraction by |τ|, then the weighted sum (Davari & Belilovsky, 2024).",
			Params: append(ties[:len(ties):len(ties)], "gamma"), Mergekit: true},
		{Name: "breadcrumbs_ties", Doc: "Breadcrumbs' band, then TIES' sign election and disjoint mean.",
			Params: append(ties[:len(ties):len(ties)], "gamma"), Mergekit: true},
		{Name: "della", Doc: "DELLA: magnitude-ranked keep probabilities in density ± ε per neuron, then TIES' election (Deep et al., 2024).",
			Params: append(random[:len(random):len(random)], "epsilon"), Normalize: true, Rescale: true, Mergekit: true},
		{Name: "della_linear", Doc: "DELLA's drop, then the weighted sum.",
			Params: append(random[:len(random):len(random)], "epsilon"), Rescale: true, Mergekit: true},
		{Name: "consensus_ta", Doc: "Task arithmetic restricted to the entries at least k TALL masks share (Wang et al., 2024).",
			Params: []string{"weight", "lambda", "normalize", "k", "tall_lambda"}},
		{Name: "consensus_ties", Doc: "TIES restricted to the entries at least k TALL masks share.",
			Params: append(ties[:len(ties):len(ties)], "k", "tall_lambda"), Normalize: true},
		{Name: "pcb", Doc: "PCB: intra- and inter-task balancing scores, top-k of the scores, weighted by them (Du et al., 2024).",
			Params: []string{"weight", "density", "lambda", "scope"}},
		{Name: "model_stock", Doc: "Model Stock: the average pulled towards the base by the task vectors' mean cosine (Jang et al., 2024).",
			Params: nil, MinModels: 2, Mergekit: true},
		{Name: "slerp", Doc: "Spherical interpolation between exactly two models, per tensor.",
			Params: []string{"t"}, MinModels: 2, MaxModels: 2, Mergekit: true},
		{Name: "nearswap", Doc: "NearSwap: each entry moves from the base towards the one fine-tuned model by clamp(t / |θ₀ − θ₁|, 0, 1).",
			Params: []string{"t"}, MinModels: 1, MaxModels: 1, Mergekit: true,
			Overrides: map[string]Override{"t": {Required: true, Range: &Range{Min: ptr(0), MinOpen: true},
				Doc: "NearSwap: distance below which an entry takes the fine-tuned model's value."}}},
		{Name: "multislerp", Doc: "Multi-SLERP: the weighted mean of the task vectors' directions on the hypersphere, scaled by their weighted mean norm (Charles Goddard's multislerp).",
			Params: []string{"weight", "normalize_weights", "eps"}, Mergekit: true},
		{Name: "karcher", Doc: "Karcher mean: the equally weighted Riemannian mean of the base's and the models' directions on the hypersphere, scaled by their mean norm.",
			Params: []string{"max_iter", "tol"}, Mergekit: true},
		{Name: "sce", Doc: "SCE: keep the entries of most variance across the task vectors, weight each τ_t by its mean square, TIES' sign election and weighted disjoint mean (Wan et al., 2024).",
			Params: []string{"select_topk", "int8_mask"}, Mergekit: true},
		{Name: "nuslerp", Doc: "NuSLERP: spherical interpolation between two task vectors, at t = w_2 / (w_1 + w_2), added to the base.",
			Params: []string{"weight", "nuslerp_flatten", "nuslerp_row_wise"}, MinModels: 2, MaxModels: 2, Mergekit: true},
		{Name: "arcee_fusion", Doc: "Arcee Fusion: the fine-tuned model's entries whose importance |θ₁ − θ₀|·KL(row) passes Tukey's upper fence, the base elsewhere.",
			Params: nil, MinModels: 1, MaxModels: 1, Mergekit: true},
		{Name: "ram", Doc: "RAM: per entry, the mean of the task vectors larger than ε in magnitude (one alone is taken whole), added to the base.",
			Params: []string{"epsilon"}, Mergekit: true,
			Overrides: map[string]Override{"epsilon": {Default: 1e-5,
				Doc: "RAM: a task-vector entry counts when its magnitude exceeds ε, one value or one per model."}}},
		{Name: "passthrough", Doc: "Passthrough: the one model's tensor as it is, or times its scale (frankenmerges: `slices:` with one source per slice).",
			Params: []string{"scale"}, MinModels: 1, MaxModels: 1, Mergekit: true},
		{Name: "neuro", Doc: "NeuroMerging: per-neuron split of the trimmed τ into the part parallel to the pre-trained neuron and the orthogonal rest (Fang et al., 2025).",
			Params: []string{"weight", "lambda", "scope", "mask_rate", "lam1", "lam2"}, Scope: "global"},
		{Name: "tsv", Doc: "TSV-Merge: each task's top singular vectors, decorrelated across tasks (Gargiulo et al., 2025).",
			Params: subspace},
		{Name: "iso_c", Doc: "Iso-C: task arithmetic's spectrum flattened to its mean singular value (Marczak et al., 2025).",
			Params: subspace},
		{Name: "iso_cts", Doc: "Iso-CTS: isotropic merge of a common subspace and task-specific ones.",
			Params: append(subspace[:len(subspace):len(subspace)], "common_space_fraction")},
		{Name: "fisher", Doc: "Fisher merging: per-entry Fisher-weighted mean of the task vectors (Matena & Raffel, 2022).",
			Params: []string{"weight", "lambda", "statistics", "fisher_floor"}, DataAware: true},
		{Name: "regmean", Doc: "RegMean: per linear layer, the weights that best reproduce every model's outputs on its inputs (Jin et al., 2023).",
			Params: []string{"weight", "lambda", "statistics", "alpha"}, DataAware: true},
	} {
		spec(s)
	}
}
