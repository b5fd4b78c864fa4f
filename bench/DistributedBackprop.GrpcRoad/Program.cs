// gRPC (Grpc.AspNetCore + Grpc.Net.Client) measured as the tensor road, the way `dbp bench-transfer`
// measures the bulk channel: two processes on loopback, mutual TLS with certificates from one cluster CA
// (the project's own ClusterAuthority), gradient-sized messages streamed from one to the other, timed from
// the first message to the receiver's acknowledgement of the last.
//
//   dotnet run -c Release --project bench/DistributedBackprop.GrpcRoad -- [--messages 2000] [--floats 235146]
using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Security.Cryptography.X509Certificates;
using System.Text.Json;
using DistributedBackprop.Actors.Security;
using DistributedBackprop.GrpcRoad;
using Google.Protobuf;
using Grpc.Core;
using Grpc.Net.Client;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.AspNetCore.Server.Kestrel.Https;

int messages = Option("--messages", 2000), floats = Option("--floats", 235_146);
string? serveFrom = args.SkipWhile(a => a != "--serve").Skip(1).FirstOrDefault();
if (serveFrom is not null)
{
    await Serve(serveFrom, floats);
    return 0;
}

string stateDirectory = Directory.CreateTempSubdirectory("dbp-grpc-ca-").FullName;
try
{
    ClusterAuthority authority = ClusterAuthority.LoadOrCreate(stateDirectory);
    var info = new ProcessStartInfo(Environment.ProcessPath!) { RedirectStandardOutput = true, UseShellExecute = false };
    if (Path.GetFileNameWithoutExtension(Environment.ProcessPath) == "dotnet")
    {
        info.ArgumentList.Add(typeof(Ack).Assembly.Location);
    }
    foreach (string arg in new[] { "--serve", stateDirectory, "--floats", floats.ToString(CultureInfo.InvariantCulture) })
    {
        info.ArgumentList.Add(arg);
    }
    using Process server = Process.Start(info)!;
    string ready = await server.StandardOutput.ReadLineAsync() ?? "";
    if (!ready.StartsWith("ready ", StringComparison.Ordinal))
    {
        throw new InvalidOperationException("the receiving process did not start");
    }
    int port = int.Parse(ready[6..], CultureInfo.InvariantCulture);

    NodeIdentity identity = authority.IssueOwn("bench", "sender", "akka.ssl.tcp://dbp@127.0.0.1:1");
    var handler = new SocketsHttpHandler
    {
        SslOptions =
        {
            ClientCertificates = [identity.Certificate],
            RemoteCertificateValidationCallback = (_, certificate, _, _) => identity.Validate(certificate, out _) is { Role: "bench" },
        },
        // HTTP/2 flow-control windows sized for megabyte messages (the defaults, 64 KB–1 MB, throttle them).
        InitialHttp2StreamWindowSize = 16 << 20,
        KeepAlivePingDelay = TimeSpan.FromSeconds(30),
        KeepAlivePingTimeout = TimeSpan.FromSeconds(10),
    };
    using GrpcChannel channel = GrpcChannel.ForAddress($"https://127.0.0.1:{port}", new GrpcChannelOptions
    {
        HttpHandler = handler,
        MaxSendMessageSize = 4 * floats + 1024,
    });
    var client = new TensorRoad.TensorRoadClient(channel);
    var values = new float[floats];
    for (int i = 0; i < floats; i++) values[i] = i * 1e-3f;
    // One byte view of the tensor, reused: gRPC's best case (no per-message copy on the sending side).
    ByteString payload = UnsafeByteOperations.UnsafeWrap(MemoryMarshal.AsBytes(values.AsSpan()).ToArray());

    await Push(client, payload, 50); // warm-up: connection, TLS, JIT
    var clock = Stopwatch.StartNew();
    Ack ack = await Push(client, payload, messages);
    double seconds = clock.Elapsed.TotalSeconds;
    if (ack.Messages != messages)
    {
        throw new InvalidOperationException($"the receiver acknowledged {ack.Messages} of {messages} messages");
    }
    double tensorBytes = (double)messages * floats * sizeof(float);
    Console.WriteLine(JsonSerializer.Serialize(new Dictionary<string, object>
    {
        ["road"] = "grpc (Grpc.AspNetCore + Grpc.Net.Client, HTTP/2, mutual TLS)",
        ["messages"] = messages,
        ["floats_per_message"] = floats,
        ["seconds"] = Math.Round(seconds, 4),
        ["gigabytes_per_second"] = Math.Round(tensorBytes / seconds / 1e9, 3),
    }));
    server.Kill();
    return 0;
}
finally
{
    Directory.Delete(stateDirectory, recursive: true);
}

static async Task<Ack> Push(TensorRoad.TensorRoadClient client, ByteString payload, int count)
{
    using AsyncClientStreamingCall<Tensor, Ack> call = client.Push(deadline: DateTime.UtcNow.AddMinutes(5));
    for (int i = 0; i < count; i++)
    {
        await call.RequestStream.WriteAsync(new Tensor { Step = i, Payload = payload });
    }
    await call.RequestStream.CompleteAsync();
    return await call.ResponseAsync;
}

static async Task Serve(string stateDirectory, int floats)
{
    ClusterAuthority authority = ClusterAuthority.LoadOrCreate(stateDirectory);
    NodeIdentity identity = authority.IssueOwn("bench", "receiver", "akka.ssl.tcp://dbp@127.0.0.1:2");
    WebApplicationBuilder builder = WebApplication.CreateSlimBuilder();
    builder.Logging.ClearProviders();
    builder.Services.AddGrpc(options =>
    {
        // The size limit the bulk channel derives from the run: one tensor plus a header.
        options.MaxReceiveMessageSize = 4 * floats + 1024;
    });
    builder.Services.AddSingleton(new Sink(floats));
    builder.WebHost.ConfigureKestrel(kestrel =>
    {
        kestrel.Limits.Http2.InitialConnectionWindowSize = 32 << 20;
        kestrel.Limits.Http2.InitialStreamWindowSize = 16 << 20;
        kestrel.Limits.Http2.MaxFrameSize = (1 << 24) - 1;
        kestrel.Limits.Http2.KeepAlivePingDelay = TimeSpan.FromSeconds(30);
        kestrel.Listen(System.Net.IPAddress.Loopback, 0, listen =>
        {
            listen.Protocols = HttpProtocols.Http2;
            listen.UseHttps(new HttpsConnectionAdapterOptions
            {
                ServerCertificate = identity.Certificate,
                ClientCertificateMode = ClientCertificateMode.RequireCertificate,
                ClientCertificateValidation = (certificate, _, _) => identity.Validate(certificate, out _) is { Role: "bench" },
            });
        });
    });
    WebApplication app = builder.Build();
    app.MapGrpcService<TensorRoadService>();
    await app.StartAsync();
    var address = app.Urls.Select(u => new Uri(u)).First(u => u.Host is "127.0.0.1" or "localhost" or "[::1]");
    Console.WriteLine($"ready {address.Port}");
    await app.WaitForShutdownAsync();
}

int Option(string name, int fallback) =>
    args.SkipWhile(a => a != name).Skip(1).FirstOrDefault() is { } text ? int.Parse(text, CultureInfo.InvariantCulture) : fallback;

/// <summary>Where received tensors land: one float array, as the bulk channel reads into pooled arrays.</summary>
internal sealed class Sink(int floats)
{
    public float[] Values { get; } = new float[floats];
}

internal sealed class TensorRoadService(Sink sink) : TensorRoad.TensorRoadBase
{
    public override async Task<Ack> Push(IAsyncStreamReader<Tensor> requestStream, ServerCallContext context)
    {
        long messages = 0, bytes = 0;
        await foreach (Tensor tensor in requestStream.ReadAllAsync(context.CancellationToken))
        {
            ReadOnlySpan<byte> payload = tensor.Payload.Span;
            payload.CopyTo(MemoryMarshal.AsBytes(sink.Values.AsSpan()));
            messages++;
            bytes += payload.Length;
        }
        return new Ack { Messages = messages, Bytes = bytes };
    }
}
