// Package avxstate lets tests check that vector code leaves the upper halves
// of the vector registers clean when it returns.
//
// On Intel CPUs, every switch between legacy SSE and VEX instructions while
// the upper halves of the YMM/ZMM registers hold data costs a state
// transition, hundreds of cycles each on the Xeons measured. Go compiles
// scalar float code to legacy SSE, and math.Exp's assembly interleaves
// legacy SSE with VEX FMA instructions, so a vector loop that returns
// without VZEROUPPER (archsimd.ClearAVXUpperBits) makes the math.Exp calls
// after it 10–300× slower. The check here times math.Exp right after the
// code under test against right after a VZEROUPPER; on CPUs without the
// penalty (AMD) both take the same time, which Penalty reveals, and the
// tests skip. The code is built only with GOEXPERIMENT=simd on amd64.
package avxstate
