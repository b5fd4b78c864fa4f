namespace DistributedBackprop.Cli.Tests;

/// <summary>
/// A test of a slow, opt-in suite (real processes, network namespaces, docker). It runs only when the
/// environment variable DBP_INTEGRATION names its suite or says "all" (`.ci/run` does); the default
/// `dotnet test` reports it as skipped. Filter by trait: `--filter Category=Integration`.
/// </summary>
public sealed class IntegrationFactAttribute : FactAttribute
{
    public IntegrationFactAttribute(string suite)
    {
        string wanted = Environment.GetEnvironmentVariable("DBP_INTEGRATION") ?? "";
        string[] suites = wanted.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (!suites.Contains("all") && !suites.Contains(suite))
        {
            Skip = $"opt-in suite '{suite}': set DBP_INTEGRATION={suite} (or all) to run it";
        }
        Timeout = 0;
    }
}
