// Package rusage reports the process's own resource use: its peak
// resident memory and the CPU time of all its threads, on unix
// (getrusage) and Windows (GetProcessMemoryInfo, GetProcessTimes). Both
// return 0 where the system does not report them.
package rusage
