package main

import (
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"
)

func TestReadme_configurationTableMatchesConfig(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]string{}
	for _, l := range strings.Split(string(readme), "\n") {
		if strings.HasPrefix(l, "| `--") {
			flag := strings.Trim(strings.Split(l, "|")[1], " `")
			rows[flag] = l
		}
	}
	ct := reflect.TypeOf(Config{})
	for i := range ct.NumField() {
		f := ct.Field(i)
		def := f.Tag.Get("default")
		if def == "" {
			def = "(empty)"
		} else {
			def = "`" + def + "`"
		}
		want := fmt.Sprintf("| `--%s` | `%s_%s` | %s |", f.Tag.Get("flag"), envPrefix, f.Tag.Get("envconfig"), def)
		row, ok := rows["--"+f.Tag.Get("flag")]
		if !ok || !strings.HasPrefix(row, want) {
			t.Errorf("README configuration row for --%s is %q, want it to start with %q", f.Tag.Get("flag"), row, want)
		}
		delete(rows, "--"+f.Tag.Get("flag"))
	}
	for flag := range rows {
		t.Errorf("README documents %s, which Config does not have", flag)
	}
}
