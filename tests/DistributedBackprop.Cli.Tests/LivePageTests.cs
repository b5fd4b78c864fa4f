using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using Microsoft.Playwright;
using Xunit.Abstractions;

namespace DistributedBackprop.Cli.Tests;

/// <summary>
/// `dbp serve --http`: the live page in a real headless browser (Microsoft.Playwright driving Debian's
/// chromium) while a server and two worker processes train; /api/status and /metrics over HTTP. Opt-in suite
/// "browser" (`.ci/run` installs chromium and runs it). The screenshot is kept in DBP_ARTIFACTS (default
/// /tmp/dbp-artifacts).
/// </summary>
[Trait("Category", "Integration")]
public sealed class LivePageTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("dbp-live-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }

    private static string Chromium =>
        Environment.GetEnvironmentVariable("DBP_CHROMIUM") ?? (File.Exists("/usr/bin/chromium") ? "/usr/bin/chromium" : "/usr/bin/chromium-browser");

    [IntegrationFact("browser")]
    public async Task The_live_page_shows_members_workers_curves_and_counters_as_the_cluster_trains()
    {
        // The browser first: its start is a burst of CPU that would otherwise fall on the cluster's first heartbeats.
        using IPlaywright playwright = await Playwright.CreateAsync();
        await using IBrowser browser = await playwright.Chromium.LaunchAsync(new BrowserTypeLaunchOptions { ExecutablePath = Chromium, Headless = true, Args = ["--no-sandbox"] });
        int http = FreePort();
        string checkpoint = Path.Combine(_dir, "run.checkpoint");
        using var server = new RunningDbp(_dir, "serve", "--epochs", "100000", "--validation-fraction", "0.2", "--min-workers", "2", "--port", "0", "--http", $"127.0.0.1:{http}",
            "--checkpoint", checkpoint, "--checkpoint-every", "200", "--state-dir", Path.Combine(_dir, "state"), "--token-file", Path.Combine(_dir, "token"), "--progress", "none");
        string[] join = server.WaitFor(@"workers join with: dbp (worker .*)$", TimeSpan.FromSeconds(60)).Groups[1].Value.Split(' ');
        string url = server.WaitFor(@"live page at (http://\S+)", TimeSpan.FromSeconds(30)).Groups[1].Value;
        using var w1 = new RunningDbp(_dir, [.. join, "--name", "w1"]);
        using var w2 = new RunningDbp(_dir, [.. join, "--name", "w2"]);

        IPage page = await browser.NewPageAsync(new BrowserNewPageOptions { ViewportSize = new ViewportSize { Width = 1400, Height = 1150 } });
        await page.GotoAsync(url);
        var patience = new PageWaitForFunctionOptions { Timeout = 90_000 };

        // Three members Up (the server and both workers), both workers' rates, curves with a few epochs, a checkpoint.
        await page.WaitForFunctionAsync("() => document.querySelectorAll('#members tbody tr').length === 3 && [...document.querySelectorAll('#members .pill')].every(p => p.textContent === 'Up')", null, patience);
        await page.WaitForFunctionAsync("() => document.querySelectorAll('#workers tbody tr').length === 2", null, patience);
        await page.WaitForFunctionAsync("() => (document.querySelector('#loss-chart polyline[data-series=train_loss]')?.getAttribute('points') ?? '').split(' ').length >= 5", null, patience);
        await page.WaitForFunctionAsync("() => document.querySelector('#checkpoint').textContent.includes('step')", null, patience);
        // The held-out validation curve beside train and test (a run without --validation-fraction has none).
        Assert.Equal(["train_loss", "validation_loss", "test_loss"], await page.Locator("#loss-chart polyline").EvaluateAllAsync<string[]>("ps => ps.map(p => p.dataset.series)"));
        Assert.True((await page.Locator("#accuracy-chart polyline[data-series=validation_accuracy]").GetAttributeAsync("points"))!.Split(' ').Length >= 5);
        Assert.Equal(["w1", "w2"], await page.Locator("#workers tbody tr td:first-child").AllTextContentsAsync());
        string roles = string.Join(";", await page.Locator("#members tbody tr td:nth-child(2)").AllTextContentsAsync());
        Assert.Equal(1, roles.Split(';').Count(r => r == "parameter-server"));
        Assert.Equal(2, roles.Split(';').Count(r => r == "worker"));
        Assert.Equal("live", await page.Locator("#connection").TextContentAsync());

        // Live: the step shown moves on without a reload (server-sent events).
        long before = long.Parse((await page.Locator("#step").TextContentAsync())!, CultureInfo.InvariantCulture);
        await page.WaitForFunctionAsync($"() => Number(document.querySelector('#step').textContent) > {before}", null, patience);

        string artifacts = Environment.GetEnvironmentVariable("DBP_ARTIFACTS") ?? Path.Combine(Path.GetTempPath(), "dbp-artifacts");
        Directory.CreateDirectory(artifacts);
        string screenshot = Path.Combine(artifacts, "live-page.png");
        await page.ScreenshotAsync(new PageScreenshotOptions { Path = screenshot, FullPage = true });
        output.WriteLine($"screenshot: {screenshot}");

        // The same state for scripts, and for Prometheus. Read until the cluster is steady: on two busy cores a
        // worker may miss its heartbeats for the 2 s the failure detector allows (chromium starting, JIT), be
        // downed and rejoin; the page then rightly lists the downed incarnation until the cluster removes it.
        using var client = new HttpClient();
        JsonDocument status = JsonDocument.Parse(await client.GetStringAsync(url + "api/status"));
        string metrics = await client.GetStringAsync(url + "metrics");
        for (var steady = Stopwatch.StartNew(); steady.Elapsed < TimeSpan.FromSeconds(90); await Task.Delay(250))
        {
            bool threeUp = status.RootElement.GetProperty("members").GetArrayLength() == 3
                && status.RootElement.GetProperty("counters").GetProperty("workers_registered").GetInt32() == 2
                && metrics.Contains("dbp_cluster_members{status=\"Up\"} 3", StringComparison.Ordinal)
                && metrics.Contains("dbp_workers_registered 2", StringComparison.Ordinal);
            if (threeUp)
            {
                break;
            }
            status.Dispose();
            status = JsonDocument.Parse(await client.GetStringAsync(url + "api/status"));
            metrics = await client.GetStringAsync(url + "metrics");
        }
        using JsonDocument steadyStatus = status;
        Assert.Equal("training", status.RootElement.GetProperty("state").GetString());
        Assert.Equal(3, status.RootElement.GetProperty("members").GetArrayLength());
        Assert.Equal(2, status.RootElement.GetProperty("counters").GetProperty("workers_registered").GetInt32());
        Assert.True(status.RootElement.GetProperty("checkpoint").GetProperty("global_step").GetInt64() > 0);
        Assert.Contains("dbp_cluster_members{status=\"Up\"} 3", metrics);
        Assert.Contains("dbp_workers_registered 2", metrics);
        Assert.Contains("# TYPE dbp_step_duration_seconds histogram", metrics);
        Assert.Contains("# TYPE dbp_gradients_stale_dropped_total counter", metrics);
        Assert.Contains("dbp_worker_steps_per_second{worker=\"w1\"}", metrics);
    }

    [Fact]
    public void A_non_loopback_address_needs_an_explicit_flag()
    {
        DbpResult refused = DbpProcess.Run(_dir, "serve", "--http", "0.0.0.0:8080", "--state-dir", Path.Combine(_dir, "state"));
        Assert.Equal(2, refused.ExitCode);
        Assert.Contains("--http: 0.0.0.0 is not a loopback address", refused.Stderr);
        DbpResult bad = DbpProcess.Run(_dir, "serve", "--http", "localhost:http", "--state-dir", Path.Combine(_dir, "state"));
        Assert.Equal(2, bad.ExitCode);
        Assert.Contains("is not [HOST:]PORT", bad.Stderr);
    }
}

/// <summary>A worker whose server never answers: one line saying so, then exit 1 after --join-timeout.</summary>
public sealed class JoinTimeoutTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("dbp-join-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void An_unreachable_server_is_one_line_then_exit_1_after_the_join_timeout()
    {
        int closed;
        using (var listener = new TcpListener(IPAddress.Loopback, 0))
        {
            listener.Start();
            closed = ((IPEndPoint)listener.LocalEndpoint).Port; // free again once the listener stops: nobody answers there
        }
        DbpResult run = DbpProcess.Run(_dir, "worker", "--join", $"127.0.0.1:{closed - 1}", "--insecure", "--join-timeout", "2", "--name", "lonely");
        Assert.Equal(1, run.ExitCode);
        string[] lines = run.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Single(lines, l => l.Contains("cannot reach the server's join handshake at 127.0.0.1:" + closed, StringComparison.Ordinal) && l.Contains("for up to 2 s (--join-timeout)", StringComparison.Ordinal));
        Assert.Contains(lines, l => l.StartsWith("dbp worker: no server answered at", StringComparison.Ordinal) && l.Contains("within 2 s (--join-timeout)", StringComparison.Ordinal));
        Assert.DoesNotContain("gated", run.Stderr);
    }
}
