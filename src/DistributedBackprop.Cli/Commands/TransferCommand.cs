using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using DistributedBackprop.Actors.Transport;

namespace DistributedBackprop.Cli.Commands;

/// <summary>
/// `dbp bench-transfer`: sustained throughput of the bulk tensor channel between two processes on this
/// machine (it starts the receiving process itself).
/// </summary>
internal static class TransferCommand
{
    /// <summary>2^28 floats: a 1 GB message.</summary>
    private const int MaxFloats = 1 << 28;

    public static Command Create()
    {
        var floats = OptionParsing.IntInRange("--floats", "Values per message (235,146 = a 784-256-128-10 gradient; 10,000,000 for a 10M-parameter model).", 235_146, 1,
            max: MaxFloats, why: "a message is serialized into one byte array, which holds at most 2 GB; 1 GB leaves room, and both processes hold one");
        var messages = OptionParsing.PositiveInt("--messages", "Messages to send.", 2000);
        var json = new Option<bool>("--json") { Description = "Print one JSON object." };
        var insecure = new Option<bool>("--insecure") { Description = "Plain TCP instead of mutual TLS (to measure what TLS costs)." };
        var receive = new Option<long>("--receive") { Description = "Internal: run as the receiving process for this many messages.", Hidden = true };
        var stateDir = new Option<string?>("--state-dir") { Description = "Internal: the CA both processes take certificates from.", Hidden = true };
        var command = new Command("bench-transfer", "Measure the bulk tensor channel (mutual TLS, as in a cluster) between two processes over loopback TCP.") { floats, messages, json, insecure, receive, stateDir };
        command.SetAction(parse => CommandRunner.Run("bench-transfer", () =>
        {
            int count = parse.GetValue(messages), size = parse.GetValue(floats);
            if (parse.GetValue(receive) is long expected and > 0)
            {
                TransferBenchmark.Receive(expected, size, parse.GetValue(stateDir), Console.Out);
                return ExitCodes.Success;
            }
            string? authority = parse.GetValue(insecure) ? null : Directory.CreateTempSubdirectory("dbp-bench-ca-").FullName;
            var info = new ProcessStartInfo(Environment.ProcessPath!) { RedirectStandardOutput = true, UseShellExecute = false };
            if (Path.GetFileNameWithoutExtension(Environment.ProcessPath) == "dotnet")
            {
                info.ArgumentList.Add(typeof(TransferCommand).Assembly.Location);
            }
            foreach (string arg in new[] { "bench-transfer", "--receive", count.ToString(CultureInfo.InvariantCulture), "--floats", size.ToString(CultureInfo.InvariantCulture) })
            {
                info.ArgumentList.Add(arg);
            }
            if (authority is not null)
            {
                info.ArgumentList.Add("--state-dir");
                info.ArgumentList.Add(authority);
            }
            using Process receiver = Process.Start(info)!;
            string[] ready = (receiver.StandardOutput.ReadLine() ?? "").Split(' ');
            if (ready.Length != 3 || ready[0] != "ready")
            {
                throw new IOException("the receiving process did not start");
            }
            TransferResult result;
            try
            {
                result = TransferBenchmark.Send(ready[1], ready[2], count, size, authority);
                receiver.WaitForExit(TimeSpan.FromSeconds(30));
            }
            finally
            {
                if (authority is not null) Directory.Delete(authority, recursive: true);
            }
            double payload = (double)count * size * sizeof(float);
            if (parse.GetValue(json))
            {
                Console.WriteLine(JsonSerializer.Serialize(new Dictionary<string, object>
                {
                    ["tls"] = authority is not null,
                    ["messages"] = count,
                    ["floats_per_message"] = size,
                    ["seconds"] = Math.Round(result.Seconds, 4),
                    ["bytes_on_wire"] = result.Bytes,
                    ["tensor_bytes"] = payload,
                    ["wire_over_tensor"] = Math.Round(result.Bytes / payload, 5),
                    ["gigabytes_per_second"] = Math.Round(result.BytesPerSecond / 1e9, 3),
                }));
            }
            else
            {
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"{(authority is null ? "plain TCP" : "mutual TLS")}: {count} messages of {size:N0} floats ({size * 4 / 1e6:F2} MB) in {result.Seconds:F3} s: {result.BytesPerSecond / 1e9:F2} GB/s; {result.Bytes / payload:F5} bytes on the wire per tensor byte"));
            }
            return ExitCodes.Success;
        }));
        return command;
    }
}
