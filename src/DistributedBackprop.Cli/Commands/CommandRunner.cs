using System.Runtime.InteropServices;
using DistributedBackprop.Actors;
using DistributedBackprop.Data;
using DistributedBackprop.Models;

namespace DistributedBackprop.Cli.Commands;

/// <summary>Runs a command body and maps failures to one line on stderr plus an exit code.</summary>
internal static class CommandRunner
{
    /// <param name="handlesInterrupt">the body handles Ctrl-C and SIGTERM itself (the worker leaves the cluster gracefully).</param>
    public static int Run(string command, Func<int> body, bool handlesInterrupt = false)
    {
        // Ctrl-C and SIGTERM end the process through the runtime's exit handlers (the runtime's own handling of
        // Ctrl-C skips them): a checkpoint being written is finished or its temporary file removed
        // (DataFiles.WriteAtomically). A server's actor system is not shut down first (Akka's own hook is off,
        // see NodeSettings.BuildConfig): it stops as a crash would and its workers rejoin its restart. Exit codes
        // as shells report a death by the signal: 130 and 143.
        using PosixSignalRegistration? interrupt = handlesInterrupt ? null : PosixSignalRegistration.Create(PosixSignal.SIGINT, ExitOn(ExitCodes.Interrupted));
        using PosixSignalRegistration? terminate = handlesInterrupt ? null : PosixSignalRegistration.Create(PosixSignal.SIGTERM, ExitOn(ExitCodes.Terminated));
        try
        {
            return body();
        }
        catch (Exception e) when (e is DataException or ModelFileException or UsageException or ArgumentException or Actors.Cluster.PortUnavailableException)
        {
            OneLine.ToStandardError($"dbp {command}: {RunFiles.Attribute(e.Message)}");
            return ExitCodes.BadInput;
        }
        catch (Engine.TrainingDivergedException e)
        {
            OneLine.ToStandardError($"dbp {command}: training stopped: {e.Message}");
            return ExitCodes.Failure;
        }
        catch (TrainingStoppedException e)
        {
            OneLine.ToStandardError($"dbp {command}: training stopped: {e.Message}");
            return ExitCodes.Failure;
        }
        catch (IOException e)
        {
            OneLine.ToStandardError($"dbp {command}: {e.Message}");
            return ExitCodes.Failure;
        }
        catch (OperationCanceledException)
        {
            OneLine.ToStandardError($"dbp {command}: cancelled");
            return ExitCodes.Interrupted;
        }
    }

    private static Action<PosixSignalContext> ExitOn(int code) => signal =>
    {
        signal.Cancel = true;
        Environment.Exit(code);
    };
}

/// <summary>Training could not continue (e.g. a worker sent a non-finite gradient).</summary>
internal sealed class TrainingStoppedException(string message, bool restartable = false) : Exception(message)
{
    /// <summary>The server lost state with a node: it ends as if it had died (the workers wait), a restart resumes.</summary>
    public bool Restartable { get; } = restartable;
}

/// <summary>An option combination that parses but makes no sense; reported like a parse error.</summary>
internal sealed class UsageException(string message) : Exception(message);
