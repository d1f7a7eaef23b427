package main

import (
	"fmt"
	"io"
	"strings"
)

// The tables coordbench prints: one per frame, native and proxy side by
// side, with ratios and costs.

// printTables prints every table the results have: the main one, costs,
// the noisy neighbour's, and with -policy and -peer their comparisons.
func printTables(w io.Writer, results []result, policy, peer bool) {
	printTable(w, results)
	fmt.Fprintln(w)
	printCostTable(w, results)
	printNoisyTable(w, results)
	if policy {
		fmt.Fprintln(w)
		printPolicyTable(w, results)
	}
	if peer {
		fmt.Fprintln(w)
		printPeerTable(w, results)
	}
}

// printPolicyTable compares the proxy with and without a policy in force.
func printPolicyTable(w io.Writer, results []result) {
	fmt.Fprintln(w, "| scenario | coordproxy ops/s | with a policy | ratio | coordproxy CPU µs/op without / with | allocs/op without / with | etcd requests/op without / with |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|")
	order, by := byScenario(results)
	for _, s := range order {
		p, q := by[s]["coordproxy"], by[s]["coordproxy+policy"]
		if q.Count == 0 {
			continue
		}
		ratio := "–"
		if p.Ops > 0 {
			ratio = fmt.Sprintf("%.2f×", q.Ops/p.Ops)
		}
		pair := func(k string) string { return show(p.Extra[k]) + " / " + show(q.Extra[k]) }
		fmt.Fprintf(w, "| %s | %.0f | %.0f | %s | %s | %s | %s |\n", s, p.Ops, q.Ops, ratio,
			pair("proxy_cpu_us_per_op"), pair("proxy_allocs_per_op"), pair("etcd_requests_per_op"))
	}
}

// printTable prints one row per scenario: etcd, coordproxy and the ratio.
func printTable(w io.Writer, results []result) {
	fmt.Fprintln(w, "| scenario | etcd ops/s | coordproxy ops/s | ratio | etcd p50 / p99 ms | coordproxy p50 / p99 ms | errors etcd / coordproxy | notes |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|")
	order, by := byScenario(results)
	for _, s := range order {
		n, p := by[s]["etcd"], by[s]["coordproxy"]
		ratio := "–"
		if n.Ops > 0 {
			ratio = fmt.Sprintf("%.2f×", p.Ops/n.Ops)
		}
		fmt.Fprintf(w, "| %s | %.0f | %.0f | %s | %s | %s | %d / %d | %s |\n",
			s, n.Ops, p.Ops, ratio, latencies(n), latencies(p), n.Errors, p.Errors, notes(n, p))
	}
}

// latencies is "p50 / p99", or "–" where the scenario timed nothing.
func latencies(r result) string {
	if r.P50MS == 0 && r.P99MS == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f / %.2f", r.P50MS, r.P99MS)
}

func notes(n, p result) string {
	var parts []string
	for _, k := range []string{"parked", "seconds_to_park", "etcd_watchers_added", "etcd_watchers_total", "etcd_rss_growth_mib", "proxy_rss_mib", "proxy_stack_mib", "proxy_heap_inuse_mib", "proxy_heap_idle_kept_mib", "proxy_rss_growth_mib", "proclaims_undelivered",
		"held_etcd_cpu_cores", "held_etcd_requests_per_s", "held_etcd_keepalives_per_s", "held_proxy_cpu_cores", "held_proxy_heartbeats_per_s", "held_proxy_cpu_us_per_heartbeat", "held_clients_cpu_cores", "sessions_ended_while_held", "first_ended_why", "puts_undelivered", "events_missed", "events_misordered", "etcd_keepalive_streams_open", "etcd_keepalives_per_answer", "leases_lost"} {
		nv, nok := n.Extra[k]
		pv, pok := p.Extra[k]
		if nok || pok {
			parts = append(parts, fmt.Sprintf("%s %v / %v", strings.ReplaceAll(k, "_", " "), show(nv), show(pv)))
		}
	}
	return strings.Join(parts, "; ")
}

func show(v any) string {
	switch x := v.(type) {
	case nil:
		return "–"
	case float64:
		return fmt.Sprintf("%.4g", x)
	default:
		return fmt.Sprint(x)
	}
}

// printCostTable prints what each scenario cost per op, native / proxy.
func printCostTable(w io.Writer, results []result) {
	fmt.Fprintln(w, "| scenario | etcd CPU µs/op etcd / coordproxy | coordproxy CPU µs/op | coordproxy allocs/op | etcd requests/op etcd / coordproxy | etcd watch msgs/op etcd / coordproxy |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|")
	order, by := byScenario(results)
	pair := func(n, p result, k string) string {
		return show(n.Extra[k]) + " / " + show(p.Extra[k])
	}
	for _, s := range order {
		n, p := by[s]["etcd"], by[s]["coordproxy"]
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s |\n", s, pair(n, p, "etcd_cpu_us_per_op"), show(p.Extra["proxy_cpu_us_per_op"]),
			show(p.Extra["proxy_allocs_per_op"]), pair(n, p, "etcd_requests_per_op"), pair(n, p, "etcd_watch_msgs_per_op"))
	}
}

// byScenario groups results by scenario, in the order they ran, then by
// target.
func byScenario(results []result) (order []string, by map[string]map[string]result) {
	by = map[string]map[string]result{}
	for _, r := range results {
		if by[r.Scenario] == nil {
			by[r.Scenario] = map[string]result{}
			order = append(order, r.Scenario)
		}
		by[r.Scenario][r.Target] = r
	}
	return order, by
}

// printNoisyTable is the noisy-neighbour scenario's own table: B's Lock
// under the flood against B alone, and the flood's rate.
func printNoisyTable(w io.Writer, results []result) {
	var rows []result
	for _, r := range results {
		if _, ok := r.Extra["b_alone_p99_ms"]; ok {
			rows = append(rows, r)
		}
	}
	if len(rows) == 0 {
		return
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| noisy neighbour | B Lock p99 ms alone / under the flood (ratio) | B rate alone / under the flood (ratio) | B Unlock p99 ms alone / under | B sessions lost | flood ops/s alone / with B |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|")
	for _, r := range rows {
		x := r.Extra
		flood := fmt.Sprintf("%v / %v", x["flood_alone_ops"], x["flood_ops"])
		if p, ok := x["waiters_parked"]; ok {
			flood += fmt.Sprintf(" (%v waiters parked, %v refused)", p, x["waiters_refused"])
		}
		fmt.Fprintf(w, "| %s: %s | %v / %v (%v×) | %v / %.1f (%v×) | %v / %v | %v | %s |\n", r.Scenario, r.Target,
			x["b_alone_p99_ms"], r.P99MS, x["b_p99_ratio"], x["b_alone_ops"], r.Ops, x["b_rate_ratio"],
			x["b_unlock_alone_p99_ms"], x["b_unlock_p99_ms"], x["b_sessions_lost"], flood)
	}
}

// printPeerTable puts etcd's own grpc-proxy beside native etcd and
// coordproxy: throughput as ratios to native, and what each costs etcd and
// itself per op.
func printPeerTable(w io.Writer, results []result) {
	fmt.Fprintln(w, "| scenario | etcd ops/s | grpc-proxy / native | coordproxy / native | etcd CPU µs/op native / grpc-proxy / coordproxy | proxy CPU µs/op grpc-proxy / coordproxy | etcd requests/op native / grpc-proxy / coordproxy | etcd watch msgs/op native / grpc-proxy / coordproxy | notes native / grpc-proxy / coordproxy |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|")
	order, by := byScenario(results)
	for _, s := range order {
		n, g, p := by[s]["etcd"], by[s]["grpc-proxy"], by[s]["coordproxy"]
		if g.Count == 0 {
			continue
		}
		ratio := func(r result) string {
			if n.Ops <= 0 {
				return "–"
			}
			return fmt.Sprintf("%.2f×", r.Ops/n.Ops)
		}
		three := func(k string) string {
			return show(n.Extra[k]) + " / " + show(g.Extra[k]) + " / " + show(p.Extra[k])
		}
		var notes []string
		for _, k := range []string{"etcd_watchers_added", "puts_undelivered", "events_missed", "events_misordered", "proclaims_undelivered", "parked", "etcd_keepalive_streams_open", "etcd_keepalives_per_answer", "leases_lost"} {
			if _, ok := n.Extra[k]; ok {
				notes = append(notes, strings.ReplaceAll(k, "_", " ")+" "+three(k))
			}
		}
		fmt.Fprintf(w, "| %s | %.0f | %s | %s | %s | %s / %s | %s | %s | %s |\n", s, n.Ops, ratio(g), ratio(p),
			three("etcd_cpu_us_per_op"), show(g.Extra["proxy_cpu_us_per_op"]), show(p.Extra["proxy_cpu_us_per_op"]),
			three("etcd_requests_per_op"), three("etcd_watch_msgs_per_op"), strings.Join(notes, "; "))
	}
}
