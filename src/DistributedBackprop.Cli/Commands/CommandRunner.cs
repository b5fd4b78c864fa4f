using DistributedBackprop.Data;
using DistributedBackprop.Models;

namespace DistributedBackprop.Cli.Commands;

/// <summary>Runs a command body and maps failures to one line on stderr plus an exit code.</summary>
internal static class CommandRunner
{
    public static int Run(string command, Func<int> body)
    {
        try
        {
            return body();
        }
        catch (Exception e) when (e is DataException or ModelFileException or UsageException)
        {
            Console.Error.WriteLine($"dbp {command}: {e.Message}");
            return ExitCodes.BadInput;
        }
        catch (ArgumentException e)
        {
            Console.Error.WriteLine($"dbp {command}: {e.Message}");
            return ExitCodes.BadInput;
        }
        catch (Engine.TrainingDivergedException e)
        {
            Console.Error.WriteLine($"dbp {command}: training stopped: {e.Message}");
            return ExitCodes.Failure;
        }
        catch (TrainingStoppedException e)
        {
            Console.Error.WriteLine($"dbp {command}: training stopped: {e.Message}");
            return ExitCodes.Failure;
        }
        catch (IOException e)
        {
            Console.Error.WriteLine($"dbp {command}: {e.Message}");
            return ExitCodes.Failure;
        }
        catch (OperationCanceledException)
        {
            Console.Error.WriteLine($"dbp {command}: cancelled");
            return 130;
        }
    }
}

/// <summary>Training could not continue (e.g. a worker sent a non-finite gradient).</summary>
internal sealed class TrainingStoppedException(string message, bool restartable = false) : Exception(message)
{
    /// <summary>The server lost state with a node: it ends as if it had died (the workers wait), a restart resumes.</summary>
    public bool Restartable { get; } = restartable;
}

/// <summary>An option combination that parses but makes no sense; reported like a parse error.</summary>
internal sealed class UsageException(string message) : Exception(message);
