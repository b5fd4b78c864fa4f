using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.RegularExpressions;

namespace DistributedBackprop.Cli.Commands;

/// <summary>
/// `dbp launch --workers N [options of serve]`: cluster mode on this machine in one command (torchrun's
/// --nproc-per-node): a `dbp serve` process and N `dbp worker` processes over loopback, with a join token
/// of their own in a temporary state directory. Every line of every process is shown with its prefix
/// ([server], [w1], …); the exit code is the server's. The model is the one `dbp train` trains (same bits).
/// </summary>
internal static partial class LaunchCommand
{
    public static Command Create()
    {
        var workers = OptionParsing.PositiveInt("--workers", "Worker processes to start beside the server.", 2);
        var command = new Command("launch", "Start a server and N worker processes on this machine (cluster mode over loopback) and train; other options go to `dbp serve` (e.g. --epochs, --data, --out, --http). Exit code: the server's.")
        {
            workers,
        };
        command.TreatUnmatchedTokensAsErrors = false;
        command.SetAction(parse => CommandRunner.Run("launch", () =>
        {
            int count = parse.GetValue(workers);
            string[] forwarded = parse.UnmatchedTokens.ToArray();
            bool Has(string option) => forwarded.Any(t => t == option || t.StartsWith(option + "=", StringComparison.Ordinal));
            string state = Directory.CreateTempSubdirectory("dbp-launch-").FullName;
            var children = new List<Process>();
            try
            {
                var serve = new List<string> { "serve" };
                serve.AddRange(forwarded);
                if (!Has("--port")) serve.AddRange(["--port", "0"]);
                if (!Has("--min-workers")) serve.AddRange(["--min-workers", count.ToString(CultureInfo.InvariantCulture)]);
                if (!Has("--progress")) serve.AddRange(["--progress", "plain"]);
                serve.AddRange(["--state-dir", Path.Combine(state, "cluster"), "--token-file", Path.Combine(state, "join-token")]);
                var joined = new TaskCompletionSource<string[]>(TaskCreationOptions.RunContinuationsAsynchronously);
                Process server = Start(serve, "server", line =>
                {
                    if (JoinLine().Match(line) is { Success: true } join)
                    {
                        joined.TrySetResult(join.Groups[1].Value.Split(' '));
                    }
                });
                children.Add(server);
                Task exited = server.WaitForExitAsync();
                if (Task.WhenAny(joined.Task, exited).GetAwaiter().GetResult() == joined.Task)
                {
                    for (int i = 1; i <= count; i++)
                    {
                        children.Add(Start([.. joined.Task.Result, "--name", $"w{i}"], $"w{i}", null));
                    }
                }
                server.WaitForExit();
                // Workers exit once the server tells them training is over; a server that failed tells nobody.
                foreach (Process worker in children.Skip(1))
                {
                    if (!worker.WaitForExit(TimeSpan.FromSeconds(server.ExitCode == 0 ? 30 : 5)))
                    {
                        worker.Kill(entireProcessTree: true);
                    }
                    worker.WaitForExit();
                }
                return server.ExitCode;
            }
            finally
            {
                foreach (Process child in children)
                {
                    if (!child.HasExited) child.Kill(entireProcessTree: true);
                    child.Dispose();
                }
                Directory.Delete(state, recursive: true);
            }
        }));
        return command;
    }

    [GeneratedRegex(@"workers join with: dbp (worker .*)$")]
    private static partial Regex JoinLine();

    /// <summary>Starts this same dbp with <paramref name="args"/>, every output line shown with <paramref name="prefix"/>.</summary>
    private static Process Start(IEnumerable<string> args, string prefix, Action<string>? onLine)
    {
        var info = new ProcessStartInfo(Environment.ProcessPath!) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        if (Path.GetFileNameWithoutExtension(Environment.ProcessPath) == "dotnet")
        {
            info.ArgumentList.Add(typeof(LaunchCommand).Assembly.Location);
        }
        foreach (string arg in args)
        {
            info.ArgumentList.Add(arg);
        }
        var process = new Process { StartInfo = info };
        // Console's writers are synchronized: each prefixed line is written whole, whichever process it came from.
        void Show(string? line, TextWriter writer)
        {
            if (line is null) return;
            onLine?.Invoke(line);
            writer.WriteLine($"[{prefix}] {line}");
        }
        process.OutputDataReceived += (_, e) => Show(e.Data, Console.Out);
        process.ErrorDataReceived += (_, e) => Show(e.Data, Console.Error);
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return process;
    }
}
