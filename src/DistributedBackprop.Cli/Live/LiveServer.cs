using System.Net;
using System.Reflection;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;
using Prometheus;

namespace DistributedBackprop.Cli.Live;

/// <summary>
/// `dbp serve --http`: a small Kestrel server with one page (live.html: members, workers, curves, counters,
/// updated by server-sent events), /api/status (JSON) and /metrics (Prometheus text). It polls the cluster
/// once a second and pushes the status to every open page. Read-only: nothing here changes the run.
/// </summary>
internal sealed class LiveServer : IAsyncDisposable
{
    public static readonly TimeSpan PollInterval = TimeSpan.FromSeconds(1);

    private readonly WebApplication _app;
    private readonly CancellationTokenSource _stop;
    private readonly Task _polling;

    private LiveServer(WebApplication app, CancellationTokenSource stop, Task polling)
    {
        _app = app;
        _stop = stop;
        _polling = polling;
    }

    /// <summary>The address the page is served at (http://host:port/).</summary>
    public required string Url { get; init; }

    public static async Task<LiveServer> StartAsync(IPEndPoint endpoint, LiveStatus status, Func<CancellationToken, Task<ClusterView>> look)
    {
        WebApplicationBuilder builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.ConfigureKestrel(kestrel => kestrel.Listen(endpoint));
        WebApplication app = builder.Build();
        string page = Page();
        app.MapGet("/", () => Results.Content(page, "text/html; charset=utf-8"));
        app.MapGet("/api/status", () => Results.Content(status.Json(), "application/json"));
        app.MapGet("/events", async (HttpContext context) =>
        {
            context.Response.Headers.ContentType = "text/event-stream";
            context.Response.Headers.CacheControl = "no-cache";
            CancellationToken gone = context.RequestAborted;
            try
            {
                while (!gone.IsCancellationRequested)
                {
                    await context.Response.WriteAsync($"event: status\ndata: {status.Json()}\n\n", gone).ConfigureAwait(false);
                    await context.Response.Body.FlushAsync(gone).ConfigureAwait(false);
                    await Task.Delay(PollInterval, gone).ConfigureAwait(false);
                }
            }
            catch (OperationCanceledException)
            {
                // The page was closed.
            }
        });
        app.MapMetrics("/metrics", status.Registry);
        try
        {
            await app.StartAsync().ConfigureAwait(false);
        }
        catch (IOException e)
        {
            await app.DisposeAsync().ConfigureAwait(false);
            throw new Commands.UsageException($"--http: cannot listen on {endpoint} ({e.Message})");
        }
        var stop = new CancellationTokenSource();
        return new LiveServer(app, stop, PollAsync(status, look, stop.Token)) { Url = $"http://{endpoint}/" };
    }

    private static async Task PollAsync(LiveStatus status, Func<CancellationToken, Task<ClusterView>> look, CancellationToken stop)
    {
        while (!stop.IsCancellationRequested)
        {
            try
            {
                status.Poll(await look(stop).ConfigureAwait(false));
                await Task.Delay(PollInterval, stop).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                return;
            }
        }
    }

    /// <summary>The page, embedded in the assembly (src/DistributedBackprop.Cli/Live/live.html).</summary>
    private static string Page()
    {
        using Stream stream = Assembly.GetExecutingAssembly().GetManifestResourceStream("DistributedBackprop.Cli.Live.live.html")
            ?? throw new InvalidOperationException("live.html is not embedded");
        using var reader = new StreamReader(stream);
        return reader.ReadToEnd();
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync().ConfigureAwait(false);
        await _polling.ConfigureAwait(false);
        await _app.StopAsync().ConfigureAwait(false);
        await _app.DisposeAsync().ConfigureAwait(false);
        _stop.Dispose();
    }
}
