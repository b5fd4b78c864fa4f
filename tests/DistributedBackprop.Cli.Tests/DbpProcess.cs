using System.Diagnostics;

namespace DistributedBackprop.Cli.Tests;

/// <summary>Result of one `dbp` run.</summary>
public sealed record DbpResult(int ExitCode, string Stdout, string Stderr);

/// <summary>Runs the real `dbp` (the built dbp.dll beside the tests) as a child process.</summary>
public static class DbpProcess
{
    public static string DllPath => Path.Combine(AppContext.BaseDirectory, "dbp.dll");

    public static DbpResult Run(string workingDirectory, params string[] args) => Run(workingDirectory, new Dictionary<string, string>(), args);

    /// <summary>Runs dbp with extra environment variables (e.g. the runtime's instruction-set switches).</summary>
    public static DbpResult Run(string workingDirectory, IReadOnlyDictionary<string, string> environment, params string[] args) =>
        Run(workingDirectory, environment, [], args);

    /// <summary>
    /// Runs dbp as user nobody when the tests run as root (root reads every file, so a permission check needs
    /// another user); the working directory and the files given must be reachable by that user.
    /// </summary>
    public static DbpResult RunUnprivileged(string workingDirectory, params string[] args) =>
        Environment.UserName == "root"
            ? Run(workingDirectory, new Dictionary<string, string>(), ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"], args)
            : Run(workingDirectory, args);

    private static DbpResult Run(string workingDirectory, IReadOnlyDictionary<string, string> environment, string[] launcher, string[] args)
    {
        var info = new ProcessStartInfo(launcher.Length > 0 ? launcher[0] : "dotnet")
        {
            WorkingDirectory = workingDirectory,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (string arg in launcher.Skip(1).Concat(launcher.Length > 0 ? ["dotnet"] : []))
        {
            info.ArgumentList.Add(arg);
        }
        info.ArgumentList.Add(DllPath);
        foreach (string arg in args)
        {
            info.ArgumentList.Add(arg);
        }
        info.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        foreach (var (name, value) in environment)
        {
            info.Environment[name] = value;
        }
        using Process process = Process.Start(info)!;
        Task<string> stdout = process.StandardOutput.ReadToEndAsync();
        Task<string> stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(TimeSpan.FromMinutes(5)))
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"dbp {string.Join(' ', args)} did not finish in 5 minutes");
        }
        return new DbpResult(process.ExitCode, stdout.Result, stderr.Result);
    }

    /// <summary>
    /// The user's mistake as the CLI must report it: exit 2, one line on stderr containing <paramref name="expected"/>
    /// (a parse error ends it with a pointer to <paramref name="command"/>'s --help), nothing on stdout.
    /// </summary>
    public static void AssertUsageError(DbpResult result, string expected, string command = "train")
    {
        Assert.Equal(2, result.ExitCode);
        string[] lines = result.Stderr.Trim().Split('\n');
        Assert.True(lines.Length == 1, result.Stderr);
        Assert.Contains(expected, lines[0]);
        Assert.True(!lines[0].Contains("(see: ") || lines[0].EndsWith($"(see: dbp {command} --help)", StringComparison.Ordinal), result.Stderr);
        Assert.Empty(result.Stdout.Trim());
    }
}
