// Command check parses coordproxy's Prometheus rules with Prometheus' own
// rule parser (model/rulefmt, which also parses every expression and
// template) and the PromQL of the Grafana dashboard's panels, and prints, as
// JSON, the errors and every metric name they select. deploy/monitoring_test.go
// runs it and checks the names against a running proxy's /metrics. A module
// of its own, so that Prometheus' dependencies stay out of coordproxy's.
//
// Usage: check RULES.yml DASHBOARD.json
package main

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
)

type result struct {
	Errors  []string `json:"errors"`
	Rules   int      `json:"rules"`
	Panels  int      `json:"panels"`
	Metrics []string `json:"metrics"`
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: check RULES.yml DASHBOARD.json")
		os.Exit(2)
	}
	var r result
	p := parser.NewParser(parser.Options{})
	names := map[string]bool{}
	collect := func(expr string) error {
		e, err := p.ParseExpr(expr)
		if err != nil {
			return err
		}
		parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
			if vs, ok := n.(*parser.VectorSelector); ok && vs.Name != "" {
				names[vs.Name] = true
			}
			return nil
		})
		return nil
	}

	groups, errs := rulefmt.ParseFile(os.Args[1], false, model.UTF8Validation, p, slog.New(slog.DiscardHandler))
	for _, err := range errs {
		r.Errors = append(r.Errors, err.Error())
	}
	if groups != nil {
		for _, g := range groups.Groups {
			for _, rule := range g.Rules {
				r.Rules++
				if err := collect(rule.Expr); err != nil {
					r.Errors = append(r.Errors, fmt.Sprintf("rule %s: %v", rule.Alert+rule.Record, err))
				}
			}
		}
	}

	b, err := os.ReadFile(os.Args[2])
	if err != nil {
		r.Errors = append(r.Errors, err.Error())
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		r.Errors = append(r.Errors, "dashboard: "+err.Error())
	}
	// Grafana's variables, as Grafana would fill them in.
	vars := strings.NewReplacer("$__rate_interval", "5m", "$instance", ".*")
	for _, panel := range dash.Panels {
		r.Panels++
		if len(panel.Targets) == 0 {
			r.Errors = append(r.Errors, fmt.Sprintf("panel %q has no query", panel.Title))
		}
		for _, t := range panel.Targets {
			if err := collect(vars.Replace(t.Expr)); err != nil {
				r.Errors = append(r.Errors, fmt.Sprintf("panel %q: %v", panel.Title, err))
			}
		}
	}
	for n := range names {
		r.Metrics = append(r.Metrics, n)
	}
	slices.Sort(r.Metrics)
	json.NewEncoder(os.Stdout).Encode(r)
}
