//go:build linux

package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

// report is what a run measured, printed as tables and written as JSON.
type report struct {
	Date      string         `json:"date"`
	Machine   machine        `json:"machine"`
	Tool      string         `json:"tool"`
	Peers     []peerResult   `json:"peers,omitempty"`
	Calls     []callResult   `json:"calls"`
	Setups    []setupResult  `json:"setups,omitempty"`
	Idle      *idleResult    `json:"idle,omitempty"`
	BigResult *bigResult     `json:"big_result,omitempty"`
	Targets   []targetResult `json:"targets"`
	// Notes are figures derived from two rows that no target covers.
	Notes []string `json:"notes,omitempty"`
}

type machine struct {
	CPU    string `json:"cpu"`
	CPUs   int    `json:"cpus"`
	Kernel string `json:"kernel"`
	Go     string `json:"go"`
}

// callResult is one load on one system; each figure is the median over
// the runs.
type callResult struct {
	Case            string  `json:"case"`
	System          string  `json:"system"`
	Protocol        string  `json:"protocol"`
	Sessions        int     `json:"sessions"`
	CallsPerSession int     `json:"calls_per_session"`
	Runs            int     `json:"runs"`
	SetupP50Ms      float64 `json:"setup_p50_ms"`
	SetupP99Ms      float64 `json:"setup_p99_ms"`
	P50Us           float64 `json:"latency_p50_us"`
	P90Us           float64 `json:"latency_p90_us"`
	P99Us           float64 `json:"latency_p99_us"`
	MaxUs           float64 `json:"latency_max_us"`
	CallsPerSecond  float64 `json:"calls_per_second"`
	// CPUPerCallUs is the CPU time of the bridge (or peer) process per
	// call, children excluded; absent over stdio.
	CPUPerCallUs *float64 `json:"cpu_per_call_us,omitempty"`
	background
}

// background is the highest CPU share of the machine that other programs
// used just before or during the runs, and whether it was above
// --max-background: a flagged figure was measured on a busy machine.
type background struct {
	BackgroundPercent float64 `json:"background_percent"`
	Busy              bool    `json:"busy,omitempty"`
}

// busiest is the load reading of a figure taken from rows c and other: the
// busier of the two.
func (c *callResult) busiest(other *callResult) background {
	bg := c.background
	bg.BackgroundPercent = max(bg.BackgroundPercent, other.BackgroundPercent)
	bg.Busy = bg.Busy || other.Busy
	return bg
}

// mark is the table's note on a busy machine, or "".
func (bg background) mark() string {
	if !bg.Busy {
		return ""
	}
	return fmt.Sprintf("!load %.0f%%", bg.BackgroundPercent)
}

// peerResult names a peer and the version measured.
type peerResult struct {
	Name    string `json:"name"`
	Version string `json:"version"`
}

// setupResult is sessions opened one after another.
type setupResult struct {
	Case       string  `json:"case"`
	System     string  `json:"system"`
	Sessions   int     `json:"sessions"`
	SetupP50Ms float64 `json:"setup_p50_ms"`
	SetupP99Ms float64 `json:"setup_p99_ms"`
	background
}

type idleResult struct {
	System       string  `json:"system"`
	Sessions     int     `json:"sessions"`
	Connections  int     `json:"connections"`
	OpenSeconds  float64 `json:"open_seconds"`
	RSSBeforeMiB float64 `json:"rss_before_mib"`
	RSSMiB       float64 `json:"rss_mib"`
	HeapInUseMiB float64 `json:"heap_in_use_mib"`
	StackMiB     float64 `json:"stacks_mib"`
	Goroutines   int     `json:"goroutines"`
	CPUPercent   float64 `json:"cpu_percent_of_one_core"`
}

type bigResult struct {
	System        string    `json:"system"`
	MessageMiB    float64   `json:"message_mib"`
	PeakGrowthMiB []float64 `json:"peak_growth_mib"`
	WorstRatio    float64   `json:"worst_ratio"`
}

type targetResult struct {
	Target string `json:"target"`
	Got    string `json:"got"`
	Met    bool   `json:"met"`
}

func newReport(o *options) *report {
	return &report{Date: time.Now().UTC().Format(time.DateOnly), Machine: readMachine(), Tool: o.tool}
}

func readMachine() machine {
	m := machine{CPUs: runtime.NumCPU(), Go: runtime.Version()}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	var u syscall.Utsname
	if syscall.Uname(&u) == nil {
		var b strings.Builder
		for _, c := range u.Release {
			if c == 0 {
				break
			}
			b.WriteByte(byte(c))
		}
		m.Kernel = "Linux " + b.String()
	}
	return m
}

func micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
func millis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
func mib(kib int64) float64          { return float64(kib) / 1024 }

func (r *report) addPeer(p peer) {
	r.Peers = append(r.Peers, peerResult{Name: p.name, Version: p.version})
}

func (r *report) addLoad(name string, sys *system, l load, samples []*sample, bg background) {
	var setup50, setup99, p50, p90, p99, pmax, rate, cpu []float64
	for _, s := range samples {
		slices.Sort(s.setup)
		slices.Sort(s.latency)
		setup50 = append(setup50, millis(quantile(s.setup, 0.5)))
		setup99 = append(setup99, millis(quantile(s.setup, 0.99)))
		p50 = append(p50, micros(quantile(s.latency, 0.5)))
		p90 = append(p90, micros(quantile(s.latency, 0.9)))
		p99 = append(p99, micros(quantile(s.latency, 0.99)))
		pmax = append(pmax, micros(quantile(s.latency, 1)))
		rate = append(rate, float64(len(s.latency))/s.elapsed.Seconds())
		cpu = append(cpu, micros(s.cpu)/float64(len(s.latency)))
	}
	res := callResult{
		Case: name, System: sys.name, Protocol: samples[0].version,
		Sessions: l.sessions, CallsPerSession: l.calls, Runs: len(samples),
		SetupP50Ms: median(setup50), SetupP99Ms: median(setup99),
		P50Us: median(p50), P90Us: median(p90), P99Us: median(p99), MaxUs: median(pmax),
		CallsPerSecond: median(rate), background: bg,
	}
	if sys.pid != 0 {
		c := median(cpu)
		res.CPUPerCallUs = &c
	}
	r.Calls = append(r.Calls, res)
}

func (r *report) addSetups(name string, sys *system, setups []time.Duration, bg background) {
	slices.Sort(setups)
	r.Setups = append(r.Setups, setupResult{
		Case: name, System: sys.name, Sessions: len(setups),
		SetupP50Ms: millis(quantile(setups, 0.5)), SetupP99Ms: millis(quantile(setups, 0.99)),
		background: bg,
	})
}

// idleSample is what the idle case measured.
type idleSample struct {
	sessions, connections int
	opened                time.Duration
	rssBefore, rss        int64 // KiB
	heapInUse, stackInUse int64 // KiB, as the Go runtime counts them
	goroutines            int
	cpuShare              float64
}

func (r *report) addIdle(sys *system, s idleSample) {
	r.Idle = &idleResult{
		System: sys.name, Sessions: s.sessions, Connections: s.connections,
		OpenSeconds: s.opened.Seconds(), RSSBeforeMiB: mib(s.rssBefore), RSSMiB: mib(s.rss),
		HeapInUseMiB: mib(s.heapInUse), StackMiB: mib(s.stackInUse), Goroutines: s.goroutines,
		CPUPercent: 100 * s.cpuShare,
	}
}

func (r *report) addBigResult(sys *system, size int, growthKiB []int64) {
	b := &bigResult{System: sys.name, MessageMiB: float64(size) / (1 << 20)}
	for _, g := range growthKiB {
		b.PeakGrowthMiB = append(b.PeakGrowthMiB, mib(g))
		b.WorstRatio = max(b.WorstRatio, mib(g)/b.MessageMiB)
	}
	r.BigResult = b
}

// find returns the result of system on case name, or nil.
func (r *report) find(name, system string) *callResult {
	for i := range r.Calls {
		if r.Calls[i].Case == name && r.Calls[i].System == system {
			return &r.Calls[i]
		}
	}
	return nil
}

// evaluate checks the figures against the performance targets of issues
// 9, 18, 19 and 21. A target whose figure was measured on a busy machine
// says so.
func (r *report) evaluate() {
	check := func(target string, got float64, unit string, met bool, bg background) {
		text := fmt.Sprintf("%.4g %s", got, unit)
		if m := bg.mark(); m != "" {
			text += ", " + m
		}
		r.Targets = append(r.Targets, targetResult{Target: target, Got: text, Met: met})
	}
	for _, c := range r.Calls {
		what := fmt.Sprintf("%s, %s:", c.System, c.Case)
		smallCalls := !strings.HasPrefix(c.Case, "echo") && !strings.HasPrefix(c.Case, "auth")
		if direct := r.find(c.Case, "bridge streamable"); c.System == "connector" && direct != nil {
			extra := c.P50Us - direct.P50Us
			check(what+" p50 ≤ 150 µs more than bridge streamable", extra, "µs", extra <= 150, c.busiest(direct))
		}
		if direct := r.find(c.Case, "bridge streamable"); c.System == "bridge via front" && direct != nil {
			r.Notes = append(r.Notes, fmt.Sprintf("%s the front's hop adds %.0f µs to the p50 of bridge streamable (%.0f against %.0f µs)", what, c.P50Us-direct.P50Us, c.P50Us, direct.P50Us))
		}
		if key := r.find(c.Case, "bridge api key"); c.System == "bridge jwt" && key != nil && key.CPUPerCallUs != nil && c.CPUPerCallUs != nil {
			extra := *c.CPUPerCallUs - *key.CPUPerCallUs
			check(what+" CPU per call ≤ 20 µs more than with an API key", extra, "µs", extra <= 20, c.busiest(key))
		}
		if !slices.Contains(bridgeTransports, strings.TrimPrefix(c.System, "bridge ")) {
			continue
		}
		if c.CPUPerCallUs != nil && smallCalls && (c.Sessions == 1 || c.Sessions == 8) && (c.System == "bridge streamable" || c.System == "bridge stateless") {
			check(what+" CPU per call ≤ 100 µs", *c.CPUPerCallUs, "µs", *c.CPUPerCallUs <= 100, c.background)
		}
		if streamable := r.find(c.Case, "bridge streamable"); smallCalls && (c.Sessions == 1 || c.Sessions == 8) && c.System == "bridge sse" && streamable != nil {
			if c.CPUPerCallUs != nil && streamable.CPUPerCallUs != nil {
				x := *c.CPUPerCallUs / *streamable.CPUPerCallUs
				check(what+" CPU per call ≤ 1.1× bridge streamable's", x, "×", x <= 1.1, c.busiest(streamable))
			}
			x := c.P50Us / streamable.P50Us
			check(what+" p50 ≤ 1.1× bridge streamable's", x, "×", x <= 1.1, c.busiest(streamable))
			x = c.CallsPerSecond / streamable.CallsPerSecond
			check(what+" calls/s ≥ 0.9× bridge streamable's", x, "×", x >= 0.9, c.busiest(streamable))
		}
		if stdio := r.find(c.Case, "stdio"); smallCalls && c.Sessions == 8 && stdio != nil {
			x := c.CallsPerSecond / stdio.CallsPerSecond
			check(what+" calls/s ≥ 0.85× stdio's", x, "×", x >= 0.85, c.busiest(stdio))
		}
		if strings.HasPrefix(c.Case, "echo") && c.CPUPerCallUs != nil {
			check(what+" CPU per call ≤ 400 µs", *c.CPUPerCallUs, "µs", *c.CPUPerCallUs <= 400, c.background)
		}
		if smallCalls && c.Sessions >= 64 {
			check(what+" set-up p50 ≤ 100 ms", c.SetupP50Ms, "ms", c.SetupP50Ms <= 100, c.background)
		}
	}
	for _, s := range r.Setups {
		if strings.HasPrefix(s.System, "bridge") {
			check(fmt.Sprintf("%s, %s: warm-spare set-up p50 ≤ 30 ms", s.System, s.Case), s.SetupP50Ms, "ms", s.SetupP50Ms <= 30, s.background)
		}
	}
	if i := r.Idle; i != nil {
		what := fmt.Sprintf("%s, %d idle sessions with GET streams:", i.System, i.Sessions)
		check(what+" RSS ≤ 150 MiB", i.RSSMiB, "MiB", i.RSSMiB <= 150, background{})
		check(what+" CPU ≤ 1% of a core", i.CPUPercent, "%", i.CPUPercent <= 1, background{})
	}
	if b := r.BigResult; b != nil {
		check(fmt.Sprintf("%s, a %.0f MiB result: peak RSS growth ≤ 3× its size", b.System, b.MessageMiB), b.WorstRatio, "×", b.WorstRatio <= 3, background{})
	}
}

func (r *report) writeJSON(path string) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o644)
}

// ratio formats a/b as "×1.23", or "" when either is missing.
func ratio(a, b float64) string {
	if a == 0 || b == 0 {
		return ""
	}
	return fmt.Sprintf("×%.2f", a/b)
}

func (r *report) print(out io.Writer) {
	fmt.Fprintf(out, "mcp-bench %s, %s, %d CPUs, %s, %s\n\n", r.Date, r.Machine.CPU, r.Machine.CPUs, r.Machine.Kernel, r.Machine.Go)
	if len(r.Calls) > 0 {
		fmt.Fprintf(out, "Tool calls (%s; the echo case sends and gets back its size of text); medians of %d runs.\n", r.Tool, r.Calls[0].Runs)
		fmt.Fprintln(out, "Ratios: p50 and calls/s against stdio. !load: other programs used that share of the machine before or during a run.")
		if len(r.Peers) > 0 {
			var peers []string
			for _, p := range r.Peers {
				peers = append(peers, p.Name+" "+p.Version)
			}
			fmt.Fprintf(out, "Peers: %s.\n", strings.Join(peers, ", "))
		}
		w := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(w, "case\tsystem\tprotocol\tsetup p50 ms\tsetup p99 ms\tp50 µs\tp90 µs\tp99 µs\tmax µs\tcalls/s\tCPU/call µs\tp50 vs stdio\tcalls/s vs stdio\t\t")
		for _, c := range r.Calls {
			var p50, rate string
			if floor := r.find(c.Case, "stdio"); floor != nil && c.System != "stdio" {
				p50, rate = ratio(c.P50Us, floor.P50Us), ratio(c.CallsPerSecond, floor.CallsPerSecond)
			}
			cpuText := ""
			if c.CPUPerCallUs != nil {
				cpuText = fmt.Sprintf("%.0f", *c.CPUPerCallUs)
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%.1f\t%.1f\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%s\t%s\t%s\t%s\t\n",
				c.Case, c.System, c.Protocol, c.SetupP50Ms, c.SetupP99Ms, c.P50Us, c.P90Us, c.P99Us, c.MaxUs, c.CallsPerSecond, cpuText, p50, rate, c.mark())
		}
		w.Flush()
		fmt.Fprintln(out)
	}
	if len(r.Setups) > 0 {
		fmt.Fprintln(out, "Session set-up, one session after another (the bridge's from a warm spare).")
		w := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(w, "case\tsystem\tsessions\tsetup p50 ms\tsetup p99 ms\t\t")
		for _, s := range r.Setups {
			fmt.Fprintf(w, "%s\t%s\t%d\t%.1f\t%.1f\t%s\t\n", s.Case, s.System, s.Sessions, s.SetupP50Ms, s.SetupP99Ms, s.mark())
		}
		w.Flush()
		fmt.Fprintln(out)
	}
	if i := r.Idle; i != nil {
		fmt.Fprintf(out, "Idle: %d sessions (%s, shared isolation), %d connections open, opened in %.1f s; bridge RSS %.0f MiB (%.0f MiB before; Go heap in use %.0f MiB, stacks %.0f MiB, %d goroutines), CPU %.2f%% of one core.\n\n",
			i.Sessions, i.System, i.Connections, i.OpenSeconds, i.RSSMiB, i.RSSBeforeMiB, i.HeapInUseMiB, i.StackMiB, i.Goroutines, i.CPUPercent)
	}
	if b := r.BigResult; b != nil {
		fmt.Fprintf(out, "Big result: %.0f MiB through %s; peak RSS growth per call %s MiB, worst ×%.2f the message.\n\n",
			b.MessageMiB, b.System, strings.Trim(strings.Join(strings.Fields(fmt.Sprintf("%.1f", b.PeakGrowthMiB)), ", "), "[]"), b.WorstRatio)
	}
	if len(r.Notes) > 0 {
		fmt.Fprintln(out, "Notes:")
		for _, n := range r.Notes {
			fmt.Fprintf(out, "  %s\n", n)
		}
	}
	if len(r.Targets) > 0 {
		fmt.Fprintln(out, "Targets:")
		for _, t := range r.Targets {
			mark := "MET "
			if !t.Met {
				mark = "MISS"
			}
			fmt.Fprintf(out, "  %s  %s (%s)\n", mark, t.Target, t.Got)
		}
	}
}
