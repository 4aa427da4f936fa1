// Command abn-client calls an Iter8 A/B/n gRPC service (/main.ABN/Lookup and
// /main.ABN/WriteMetric) through the ORIGINAL generated Go package of Iter8 v1.1.2
// (github.com/iter8-tools/iter8/abn/grpc), the way existing Go SDK users do. It checks that our
// server stays wire-compatible with old clients, and its bench subcommand loads our server and
// the original one the same way.
//
//	abn-client [-address HOST:PORT] [-timeout 5s] lookup APP USER
//	    prints {"versionNumber":N}
//	abn-client [-address HOST:PORT] [-timeout 5s] write APP USER METRIC VALUE
//	    prints {}
//	abn-client [-address HOST:PORT] bench lookup|write -app APP -concurrency C -duration D [-users U]
//	    prints {"requests":N,"errors":E,"rps":R,"p50_ms":..,"p90_ms":..,"p99_ms":..,"max_ms":..,...}
//
// A gRPC error prints {"code":"<status code name>","message":"..."} on stdout and exits 3.
// Usage errors exit 2.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"math/rand"
	"net"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	abn "github.com/iter8-tools/iter8/abn/grpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

const usage = `usage:
  abn-client [-address HOST:PORT] [-timeout D] lookup APP USER
  abn-client [-address HOST:PORT] [-timeout D] write APP USER METRIC VALUE
  abn-client [-address HOST:PORT] [-timeout D] bench lookup|write -app APP -concurrency C -duration D
             [-users U] [-metric M] [-conns N]

APP is "namespace/name" (e.g. default/backend). The address defaults to
$ABN_SERVICE:$ABN_SERVICE_PORT like the Iter8 SDK samples, else 127.0.0.1:50051.
Results are JSON on stdout; a gRPC error prints {"code":"...","message":"..."} and exits 3.

bench runs C goroutines for D, each calling the RPC in a closed loop (user "user-<k>" with k
drawn uniformly from U users; write sends METRIC with a random value in [0,100)), over N
connections (goroutines spread round-robin), after waiting until every connection is ready.
It prints {"requests","errors","rps","p50_ms","p90_ms","p99_ms","max_ms","mean_ms",
"duration_s","concurrency","conns","codes"}: requests counts every completed call, errors
those that failed (codes: count by status code), rps = requests per second of the run,
latencies over all calls.

global flags:
`

func main() {
	fs := flag.NewFlagSet("abn-client", flag.ExitOnError)
	address := fs.String("address", defaultAddress(), "host:port of the A/B/n gRPC service")
	timeout := fs.Duration("timeout", 5*time.Second, "deadline of each call (and of connecting, for bench)")
	fs.Usage = func() { fmt.Fprint(fs.Output(), usage); fs.PrintDefaults() }
	_ = fs.Parse(os.Args[1:])
	args := fs.Args()
	if len(args) == 0 {
		fs.Usage()
		os.Exit(2)
	}

	switch {
	case args[0] == "lookup" && len(args) == 3:
		client, _ := dial(*address)
		ctx, cancel := context.WithTimeout(context.Background(), *timeout)
		defer cancel()
		rec, err := client.Lookup(ctx, &abn.Application{Name: args[1], User: args[2]})
		exitOnError(err)
		// Printed by hand: protojson would omit a zero versionNumber.
		fmt.Printf("{\"versionNumber\":%d}\n", rec.GetVersionNumber())
	case args[0] == "write" && len(args) == 5:
		client, _ := dial(*address)
		ctx, cancel := context.WithTimeout(context.Background(), *timeout)
		defer cancel()
		_, err := client.WriteMetric(ctx, &abn.MetricValue{Application: args[1], User: args[2], Name: args[3], Value: args[4]})
		exitOnError(err)
		fmt.Println("{}")
	case args[0] == "bench" && len(args) >= 2 && (args[1] == "lookup" || args[1] == "write"):
		bench(*address, *timeout, args[1], args[2:])
	default:
		fs.Usage()
		os.Exit(2)
	}
}

func defaultAddress() string {
	if host := os.Getenv("ABN_SERVICE"); host != "" {
		port := os.Getenv("ABN_SERVICE_PORT")
		if port == "" {
			port = "50051"
		}
		return net.JoinHostPort(host, port)
	}
	return "127.0.0.1:50051"
}

// dial connects lazily (the first call connects), in plain text like the SDK samples.
func dial(address string) (abn.ABNClient, *grpc.ClientConn) {
	conn, err := grpc.Dial(address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Fprintln(os.Stderr, "abn-client:", err)
		os.Exit(2)
	}
	return abn.NewABNClient(conn), conn
}

// exitOnError prints a gRPC error as {"code","message"} and exits 3.
func exitOnError(err error) {
	if err == nil {
		return
	}
	st := status.Convert(err)
	printJSON(map[string]string{"code": st.Code().String(), "message": st.Message()})
	os.Exit(3)
}

func printJSON(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	fmt.Println(string(b))
}

type result struct {
	Requests    int64            `json:"requests"`
	Errors      int64            `json:"errors"`
	RPS         float64          `json:"rps"`
	P50         float64          `json:"p50_ms"`
	P90         float64          `json:"p90_ms"`
	P99         float64          `json:"p99_ms"`
	Max         float64          `json:"max_ms"`
	Mean        float64          `json:"mean_ms"`
	DurationS   float64          `json:"duration_s"`
	Concurrency int              `json:"concurrency"`
	Conns       int              `json:"conns"`
	Codes       map[string]int64 `json:"codes"`
}

type worker struct {
	latencies []time.Duration
	errors    int64
	codes     map[codes.Code]int64
}

func bench(address string, timeout time.Duration, rpc string, rest []string) {
	fs := flag.NewFlagSet("abn-client bench "+rpc, flag.ExitOnError)
	app := fs.String("app", "", "application, \"namespace/name\" (required)")
	concurrency := fs.Int("concurrency", 8, "goroutines calling in a closed loop")
	duration := fs.Duration("duration", 10*time.Second, "how long to run")
	users := fs.Int("users", 1000, "number of distinct users")
	metric := fs.String("metric", "sample_metric", "metric name (write)")
	nconns := fs.Int("conns", 1, "gRPC connections (HTTP/2) the goroutines share")
	_ = fs.Parse(rest)
	if *app == "" || *concurrency < 1 || *duration <= 0 || *users < 1 || *nconns < 1 || fs.NArg() > 0 {
		fs.Usage()
		os.Exit(2)
	}

	clients := make([]abn.ABNClient, *nconns)
	for i := range clients {
		client, conn := dial(address)
		defer conn.Close()
		exitOnError(waitReady(conn, timeout))
		clients[i] = client
	}

	workers := make([]worker, *concurrency)
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(*duration)
	for g := range workers {
		wg.Add(1)
		go func(w *worker, client abn.ABNClient, rng *rand.Rand) {
			defer wg.Done()
			w.codes = map[codes.Code]int64{}
			for time.Now().Before(deadline) {
				user := "user-" + strconv.Itoa(rng.Intn(*users))
				ctx, cancel := context.WithTimeout(context.Background(), timeout)
				t0 := time.Now()
				var err error
				if rpc == "lookup" {
					_, err = client.Lookup(ctx, &abn.Application{Name: *app, User: user})
				} else {
					value := strconv.FormatFloat(rng.Float64()*100, 'f', 3, 64)
					_, err = client.WriteMetric(ctx, &abn.MetricValue{Application: *app, User: user, Name: *metric, Value: value})
				}
				w.latencies = append(w.latencies, time.Since(t0))
				cancel()
				if err != nil {
					w.errors++
					w.codes[status.Code(err)]++
				}
			}
		}(&workers[g], clients[g%len(clients)], rand.New(rand.NewSource(int64(g)+1)))
	}
	wg.Wait()
	elapsed := time.Since(start)

	res := result{Concurrency: *concurrency, Conns: *nconns, DurationS: round(elapsed.Seconds()), Codes: map[string]int64{}}
	var all []time.Duration
	var sum time.Duration
	for _, w := range workers {
		all = append(all, w.latencies...)
		res.Errors += w.errors
		for c, n := range w.codes {
			res.Codes[c.String()] += n
		}
	}
	slices.Sort(all)
	for _, d := range all {
		sum += d
	}
	res.Requests = int64(len(all))
	res.RPS = round(float64(res.Requests) / elapsed.Seconds())
	if len(all) > 0 {
		res.P50, res.P90, res.P99 = ms(pct(all, 0.50)), ms(pct(all, 0.90)), ms(pct(all, 0.99))
		res.Max = ms(all[len(all)-1])
		res.Mean = ms(sum / time.Duration(len(all)))
	}
	printJSON(res)
}

// waitReady connects and waits until the connection is ready, so that connecting is not timed.
func waitReady(conn *grpc.ClientConn, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	conn.Connect()
	for {
		s := conn.GetState()
		if s == connectivity.Ready {
			return nil
		}
		if !conn.WaitForStateChange(ctx, s) {
			return status.Errorf(codes.Unavailable, "not connected to %s after %s (state %s)", conn.Target(), timeout, s)
		}
	}
}

// pct is the nearest-rank percentile of sorted durations.
func pct(sorted []time.Duration, p float64) time.Duration {
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

func ms(d time.Duration) float64 { return round(float64(d) / float64(time.Millisecond)) }
func round(x float64) float64    { return math.Round(x*1000) / 1000 }
