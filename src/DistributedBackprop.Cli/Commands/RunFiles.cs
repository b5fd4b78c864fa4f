using System.CommandLine;
using System.CommandLine.Parsing;
using System.Globalization;
using System.Text;
using System.Text.Json;
using DistributedBackprop.Engine;
using DistributedBackprop.Models;

namespace DistributedBackprop.Cli.Commands;

/// <summary>
/// Run files: `dbp train --run run.json` takes any option of the command from a JSON object keyed by the
/// option's name without its dashes ({"layers": "256,128", "epochs": 15, "optimizer": "adam", "nesterov":
/// true}); options on the command line win. `--run model.safetensors` (or a checkpoint) takes the training
/// recipe stored in the model's metadata. `--print-run` prints the resolved run in the same format, so a
/// run file can be written from any command line. The file is expanded into ordinary options before
/// parsing, so every value gets the same checks (and error lines) as on the command line.
/// </summary>
internal static class RunFiles
{
    public static readonly string[] Commands = ["train", "serve"];

    public static Option<string?> RunOption() => new("--run")
    {
        Description = "Take options from a run file: a JSON object keyed by option names without dashes ({\"layers\": \"256,128\", \"epochs\": 15}), or a model/checkpoint file (its training recipe). Options given on the command line win.",
        HelpName = "FILE",
    };

    /// <summary>
    /// <paramref name="message"/>, naming the run file if the command line being run got the option the message is
    /// about from one (<see cref="RunOrigin.Attribute"/>).
    /// </summary>
    public static string Attribute(string message) => CurrentOrigin.Value?.Attribute(message) ?? message;

    // The run file of the command line being run and the options it supplied (none: null). Per invocation (an
    // async-local, not a static): tests run several command lines in one process at once.
    private static readonly AsyncLocal<RunOrigin?> CurrentOrigin = new();

    public static Option<bool> PrintRunOption() => new("--print-run") { Description = "Print the resolved run (every option with its value, as a run file) and exit without training." };

    /// <summary>The command line with the run file's options inserted after the command name (those given on the line are left out).</summary>
    public static string[] Expand(string[] args, RootCommand root)
    {
        CurrentOrigin.Value = null;
        if (args.Length < 2 || !Commands.Contains(args[0]))
        {
            return args;
        }
        int at = Array.FindIndex(args, a => a == "--run" || a.StartsWith("--run=", StringComparison.Ordinal));
        if (at < 0)
        {
            return args;
        }
        string path = args[at].StartsWith("--run=", StringComparison.Ordinal) ? args[at]["--run=".Length..]
            : at + 1 < args.Length ? args[at + 1]
            : throw new UsageException("--run: a run file (JSON) or a model file is required");
        Command command = root.Subcommands.First(c => c.Name == args[0]);
        var given = new HashSet<string>(args.Where(a => a.StartsWith("--", StringComparison.Ordinal)).Select(a => a.Split('=')[0]), StringComparer.Ordinal);
        var inserted = new List<string>();
        bool recipe = path.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase);
        foreach (var (name, value) in Load(path, command))
        {
            if (given.Contains("--" + name))
            {
                continue;
            }
            Option option = command.Options.First(o => o.Name == "--" + name);
            if (recipe && IsDefault(option, value))
            {
                // A model's recipe names every setting; one at its default is left to the default, so it is not
                // taken for a choice the user made (and warned about: "--beta1 has no effect with momentum").
                continue;
            }
            if (option is Option<bool>)
            {
                if (value == "true") inserted.Add(option.Name);
            }
            else
            {
                inserted.Add(option.Name);
                inserted.Add(value);
            }
        }
        CurrentOrigin.Value = new RunOrigin(path, inserted.Where(a => a.StartsWith("--", StringComparison.Ordinal)).ToHashSet(StringComparer.Ordinal));
        return [args[0], .. inserted, .. args[1..]];
    }

    /// <summary>The option's default spelled as <paramref name="value"/> is (numbers in invariant form, names in any case).</summary>
    private static bool IsDefault(Option option, string value)
    {
        string? spelled = !option.HasDefaultValue ? null : option.GetDefaultValue() switch
        {
            IFormattable number => number.ToString(null, CultureInfo.InvariantCulture),
            string or bool => option.GetDefaultValue()!.ToString(),
            _ => null, // lists and the like: never taken for a default
        };
        return string.Equals(spelled, value, StringComparison.OrdinalIgnoreCase);
    }

    /// <summary>The run file's options (name without dashes → value as typed).</summary>
    private static SortedDictionary<string, string> Load(string path, Command command)
    {
        if (Directory.Exists(path))
        {
            throw new UsageException($"--run: {path} is a directory, not a run file or a model file");
        }
        if (!File.Exists(path))
        {
            throw new UsageException($"--run: {path} does not exist");
        }
        if (path.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase))
        {
            Dictionary<string, string> metadata = SafeTensors.ReadMetadata(path);
            if (!metadata.TryGetValue("config", out string? config))
            {
                throw new ModelFileException($"{path}: the model has no training configuration in its metadata");
            }
            SortedDictionary<string, string> recipe;
            try
            {
                recipe = TrainingConfig.FromJson(config).AsOptions();
            }
            catch (Exception e) when (e is JsonException or FormatException or NotSupportedException)
            {
                throw new ModelFileException($"{path}: the training configuration in its metadata is not valid ({e.Message.Split('\n')[0].TrimEnd()})");
            }
            if (metadata.TryGetValue("kept", out string? kept) && kept is "best" or "last")
            {
                recipe["keep"] = kept; // which parameters the file holds is part of reproducing it
            }
            return recipe;
        }
        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(File.ReadAllText(path), new JsonDocumentOptions { CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true });
        }
        catch (UnauthorizedAccessException)
        {
            throw new UsageException($"--run: {path} cannot be read (permission denied)");
        }
        catch (JsonException e)
        {
            throw new UsageException($"{path}: not a JSON run file (line {e.LineNumber + 1}: {e.Message.Split('.')[0]})");
        }
        using (document)
        {
            if (document.RootElement.ValueKind != JsonValueKind.Object)
            {
                throw new UsageException($"{path}: a run file is a JSON object of options, e.g. {{\"epochs\": 15}}");
            }
            string[] names = command.Options.Select(o => o.Name.TrimStart('-')).Where(n => n is not ("run" or "print-run" or "help")).ToArray();
            var options = new SortedDictionary<string, string>(StringComparer.Ordinal);
            foreach (JsonProperty property in document.RootElement.EnumerateObject())
            {
                string name = property.Name.TrimStart('-');
                if (!names.Contains(name))
                {
                    string? near = UsageErrors.Closest(name, names);
                    throw new UsageException($"{path}: '{property.Name}' is not an option of dbp {command.Name}" + (near is null ? "" : $" (did you mean '{near}'?)"));
                }
                if (command.Options.First(o => o.Name == "--" + name) is Option<bool> && property.Value.ValueKind is not (JsonValueKind.True or JsonValueKind.False or JsonValueKind.Null))
                {
                    // Only true turns a switch on; "yes" or 1 used to be dropped without a word.
                    throw new UsageException($"{path}: '{property.Name}' is a switch: true or false, got {property.Value.GetRawText()}");
                }
                string? value = Text(property.Value);
                if (value is null && property.Value.ValueKind is not (JsonValueKind.Null or JsonValueKind.False))
                {
                    throw new UsageException($"{path}: '{property.Name}' must be a string, a number, true/false or a list of them");
                }
                if (value is not null)
                {
                    options[name] = value;
                }
            }
            return options;
        }
    }

    private static string? Text(JsonElement value) => value.ValueKind switch
    {
        JsonValueKind.String => value.GetString(),
        JsonValueKind.Number => value.GetRawText(),
        JsonValueKind.True => "true",
        JsonValueKind.Array when value.EnumerateArray().All(v => v.ValueKind is JsonValueKind.Number or JsonValueKind.String) =>
            string.Join(',', value.EnumerateArray().Select(v => v.ValueKind == JsonValueKind.String ? v.GetString() : v.GetRawText())),
        _ => null,
    };

    /// <summary>--print-run: every option of the command with the value this run uses (given, from the run file, or the default), as a run file.</summary>
    public static string Describe(ParseResult parse, Command command)
    {
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = true }))
        {
            json.WriteStartObject();
            foreach (Option option in command.Options)
            {
                string name = option.Name.TrimStart('-');
                if (name is "run" or "print-run" or "help")
                {
                    continue;
                }
                OptionResult? result = parse.GetResult(option);
                string? value = result is { Implicit: false }
                    ? (option is Option<bool> ? "true" : string.Join(',', result.Tokens.Select(t => t.Value)))
                    : TypedDefaults.TryGetText(option, out string? typed) ? typed
                    : result is not null ? Typed(result.GetValueOrDefault<object?>())
                    : null;
                if (value is null)
                {
                    continue;
                }
                if (option is Option<bool>) json.WriteBoolean(name, value == "true");
                else if (IsNumber(value)) json.WriteNumber(name, decimal.Parse(value, NumberStyles.Float, CultureInfo.InvariantCulture));
                else json.WriteString(name, value);
            }
            json.WriteEndObject();
        }
        return Encoding.UTF8.GetString(buffer.ToArray());
    }

    /// <summary>A default value as one would type it (invariant numbers, lower-case true/false); null for none.</summary>
    private static string? Typed(object? value) => value switch
    {
        null => null,
        bool flag => flag ? "true" : null,
        float f => f.ToString("R", CultureInfo.InvariantCulture),
        double d => d.ToString("R", CultureInfo.InvariantCulture),
        IFormattable formattable => formattable.ToString(null, CultureInfo.InvariantCulture),
        _ => value.ToString(),
    };

    private static bool IsNumber(string text) =>
        decimal.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out decimal number)
        && number.ToString(CultureInfo.InvariantCulture) == text;
}

/// <summary>A run file and the options it put on the command line: an error about one of them names the file.</summary>
internal sealed record RunOrigin(string Path, IReadOnlySet<string> Options)
{
    /// <summary><paramref name="message"/> ("--epochs: must be at least 1, got -1"), with the run file named if it supplied that option.</summary>
    public string Attribute(string message)
    {
        int end = message.IndexOfAny([':', ' ']);
        return end > 0 && Options.Contains(message[..end]) ? $"{message} (from --run {Path})" : message;
    }
}
