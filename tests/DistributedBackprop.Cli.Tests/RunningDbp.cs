using System.Collections.Concurrent;
using System.Diagnostics;
using System.Text.RegularExpressions;

namespace DistributedBackprop.Cli.Tests;

/// <summary>A dbp process running in the background, its output lines collected as they come.</summary>
public sealed class RunningDbp : IDisposable
{
    /// <summary>Every dbp process started and not disposed: a wait that fails shows the output of those its test started
    /// too, told by their working directory, each test's own (a server waiting for a worker says nothing of why the
    /// worker did not come).</summary>
    private static readonly ConcurrentDictionary<RunningDbp, byte> Live = new();

    private readonly string _workingDirectory;

    private readonly Process _process;
    private readonly ConcurrentQueue<string> _lines = new();

    public RunningDbp(string workingDirectory, params string[] args)
    {
        var info = new ProcessStartInfo("dotnet")
        {
            WorkingDirectory = workingDirectory,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        info.ArgumentList.Add(DbpProcess.DllPath);
        foreach (string arg in args)
        {
            info.ArgumentList.Add(arg);
        }
        _workingDirectory = workingDirectory;
        _process = new Process { StartInfo = info };
        _process.OutputDataReceived += (_, e) => { if (e.Data is not null) _lines.Enqueue(e.Data); };
        _process.ErrorDataReceived += (_, e) => { if (e.Data is not null) _lines.Enqueue(e.Data); };
        _process.Start();
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();
        Name = string.Join(' ', args.Take(3)) + (args.SkipWhile(a => a != "--name").Skip(1).FirstOrDefault() is { } name ? $" ({name})" : "");
        Live.TryAdd(this, 0);
    }

    public string Name { get; }

    public IEnumerable<string> Lines => _lines;

    public string Output => string.Join('\n', _lines);

    public bool HasExited => _process.HasExited;

    public int Pid => _process.Id;

    /// <summary>Waits for a line matching <paramref name="pattern"/>; returns its match.</summary>
    public Match WaitFor(string pattern, TimeSpan timeout)
    {
        var regex = new Regex(pattern);
        var clock = Stopwatch.StartNew();
        while (clock.Elapsed < timeout)
        {
            foreach (string line in _lines)
            {
                Match match = regex.Match(line);
                if (match.Success)
                {
                    return match;
                }
            }
            if (_process.HasExited)
            {
                Thread.Sleep(100); // let the last lines arrive
                foreach (string line in _lines)
                {
                    if (regex.Match(line) is { Success: true } last) return last;
                }
                throw new InvalidOperationException($"{Name} exited with {_process.ExitCode} before printing /{pattern}/:\n{Output}{OthersOutput()}");
            }
            Thread.Sleep(20);
        }
        throw new TimeoutException($"{Name} did not print /{pattern}/ within {timeout}:\n{Output}{OthersOutput()}");
    }

    private string OthersOutput() => string.Concat(Live.Keys.Where(other => other != this && other._workingDirectory == _workingDirectory).Select(other =>
        $"\n--- {other.Name} ({other.State()}):\n{other.Output}"));

    private string State()
    {
        try
        {
            return _process.HasExited ? $"exited with {_process.ExitCode}" : "running";
        }
        catch (InvalidOperationException)
        {
            return "disposed meanwhile";
        }
    }

    public int WaitForExit(TimeSpan timeout)
    {
        if (!_process.WaitForExit(timeout))
        {
            throw new TimeoutException($"{Name} did not exit within {timeout}:\n{Output}{OthersOutput()}");
        }
        _process.WaitForExit();
        return _process.ExitCode;
    }

    /// <summary>SIGTERM, as `docker stop` and systemd send it.</summary>
    public void Terminate()
    {
        using Process kill = Process.Start("kill", ["-TERM", _process.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)])!;
        kill.WaitForExit();
    }

    /// <summary>SIGKILL: no shutdown hooks, no goodbye to the cluster.</summary>
    public void KillHard() => _process.Kill(entireProcessTree: true);

    public void Dispose()
    {
        Live.TryRemove(this, out _);
        if (!_process.HasExited)
        {
            _process.Kill(entireProcessTree: true);
            _process.WaitForExit();
        }
        _process.Dispose();
    }
}
