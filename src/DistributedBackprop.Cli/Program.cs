using System.CommandLine;
using DistributedBackprop.Cli.Commands;

namespace DistributedBackprop.Cli;

public static class Program
{
    public static int Main(string[] args) => Run(args);

    /// <summary>Parses and runs a command line; returns the process exit code (see <see cref="ExitCodes"/>).</summary>
    public static int Run(string[] args)
    {
        var root = new RootCommand("dbp — train neural networks by backpropagation, on one machine or many (DistributedBackprop).");
        root.Subcommands.Add(TrainCommand.Create());
        root.Subcommands.Add(EvaluateCommand.Create());
        root.Subcommands.Add(PredictCommand.Create());
        root.Subcommands.Add(GradientsCommand.Create());
        root.Subcommands.Add(ExportCommand.Create());
        root.Subcommands.Add(PlotCommand.Create());
        root.Subcommands.Add(BenchCommand.Create());
        root.Subcommands.Add(ServeCommand.Create());
        root.Subcommands.Add(WorkerCommand.Create());
        root.Subcommands.Add(LaunchCommand.Create());
        root.Subcommands.Add(TransferCommand.Create());

        try
        {
            args = RunFiles.Expand(args, root);
        }
        catch (Exception e) when (e is UsageException or Models.ModelFileException or IOException or FormatException or System.Text.Json.JsonException)
        {
            Actors.OneLine.ToStandardError($"dbp {args[0]}: {e.Message}");
            return ExitCodes.BadInput;
        }
        ParseResult parse = root.Parse(args);
        bool wantsHelp = args.Any(a => a is "-h" or "--help" or "-?");
        if (parse.Errors.Count > 0 && !wantsHelp)
        {
            // One line per problem, naming the option; the last ends with where to look (on its own line it made
            // every mistyped option a two-line error). Exit code 2 like other usage errors.
            string command = parse.CommandResult.Command.Name;
            string prefix = command == root.Name ? "dbp" : $"dbp {command}";
            IReadOnlyList<string> problems = UsageErrors.Describe(parse, args);
            for (int i = 0; i < problems.Count; i++)
            {
                string hint = i == problems.Count - 1 ? $" (see: {prefix} --help)" : "";
                Actors.OneLine.ToStandardError($"{prefix}: {RunFiles.Attribute(problems[i])}{hint}");
            }
            return ExitCodes.BadInput;
        }
        if (wantsHelp)
        {
            var help = new StringWriter();
            int code = parse.Invoke(new InvocationConfiguration { Output = help });
            Console.Out.Write(TypedDefaults.Rewrite(help.ToString(), parse.CommandResult.Command));
            return code;
        }
        return parse.Invoke();
    }
}

/// <summary>Process exit codes.</summary>
public static class ExitCodes
{
    public const int Success = 0;
    /// <summary>Anything unexpected (a bug, an I/O failure writing output).</summary>
    public const int Failure = 1;
    /// <summary>Bad options, bad data, bad model file: the user can fix the input.</summary>
    public const int BadInput = 2;
    /// <summary>Stopped by Ctrl-C (128 + SIGINT's number, as shells report it).</summary>
    public const int Interrupted = 130;
    /// <summary>Stopped by SIGTERM (128 + 15).</summary>
    public const int Terminated = 143;
}
