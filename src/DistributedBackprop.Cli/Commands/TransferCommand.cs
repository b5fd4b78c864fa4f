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
    public static Command Create()
    {
        var floats = OptionParsing.PositiveInt("--floats", "Values per message (235,146 = a 784-256-128-10 gradient; 10,000,000 for a 10M-parameter model).", 235_146);
        var messages = OptionParsing.PositiveInt("--messages", "Messages to send.", 2000);
        var json = new Option<bool>("--json") { Description = "Print one JSON object." };
        var receive = new Option<long>("--receive") { Description = "Internal: run as the receiving process for this many messages.", Hidden = true };
        var command = new Command("bench-transfer", "Measure the bulk tensor channel between two processes over loopback TCP.") { floats, messages, json, receive };
        command.SetAction(parse => CommandRunner.Run("bench-transfer", () =>
        {
            if (parse.GetValue(receive) is long expected and > 0)
            {
                TransferBenchmark.Receive(expected, Console.Out);
                return ExitCodes.Success;
            }
            int count = parse.GetValue(messages), size = parse.GetValue(floats);
            var info = new ProcessStartInfo(Environment.ProcessPath!) { RedirectStandardOutput = true, UseShellExecute = false };
            if (Path.GetFileNameWithoutExtension(Environment.ProcessPath) == "dotnet")
            {
                info.ArgumentList.Add(typeof(TransferCommand).Assembly.Location);
            }
            foreach (string arg in new[] { "bench-transfer", "--receive", count.ToString(CultureInfo.InvariantCulture) })
            {
                info.ArgumentList.Add(arg);
            }
            using Process receiver = Process.Start(info)!;
            string[] ready = (receiver.StandardOutput.ReadLine() ?? "").Split(' ');
            if (ready.Length != 3 || ready[0] != "ready")
            {
                throw new IOException("the receiving process did not start");
            }
            TransferResult result = TransferBenchmark.Send(ready[1], ready[2], count, size);
            receiver.WaitForExit(TimeSpan.FromSeconds(30));
            double payload = (double)count * size * sizeof(float);
            if (parse.GetValue(json))
            {
                Console.WriteLine(JsonSerializer.Serialize(new Dictionary<string, object>
                {
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
                    $"{count} messages of {size:N0} floats ({size * 4 / 1e6:F2} MB) in {result.Seconds:F3} s: {result.BytesPerSecond / 1e9:F2} GB/s; {result.Bytes / payload:F5} bytes on the wire per tensor byte"));
            }
            return ExitCodes.Success;
        }));
        return command;
    }
}
