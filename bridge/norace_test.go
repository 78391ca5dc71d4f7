//go:build !race

package bridge

// raceEnabled: the race detector multiplies memory use.
const raceEnabled = false
