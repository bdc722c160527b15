//go:build !linux

// Package sysmem tells how much memory the process may use: the machine's,
// or less where a cgroup (a container) limits it.
package sysmem

// Machine is the machine's memory in bytes; 0 (unknown) on this system.
func Machine() int64 { return 0 }

// Limit is the memory this process may use; 0 (unknown) on this system.
func Limit() int64 { return 0 }
