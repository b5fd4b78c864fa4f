using System.CommandLine;
using System.CommandLine.Parsing;
using System.Globalization;
using DistributedBackprop.Cli.Output;
using DistributedBackprop.Data;
using DistributedBackprop.Engine;
using DistributedBackprop.Network;
using DistributedBackprop.Optimizers;

namespace DistributedBackprop.Cli.Commands;

/// <summary>Option factories with validation, so every command reports bad values the same way.</summary>
internal static class OptionParsing
{
    public static Option<int> PositiveInt(string name, string description, int defaultValue) =>
        IntInRange(name, description, defaultValue, 1);

    /// <summary>
    /// An integer option in [<paramref name="min"/>, <paramref name="max"/>]; unparsable text and out-of-range values
    /// are parse errors naming the option (above <paramref name="max"/>: with <paramref name="why"/>, the limit's reason).
    /// </summary>
    public static Option<int> IntInRange(string name, string description, int defaultValue, int min, string? helpName = null, int max = int.MaxValue, string? why = null) => new(name)
    {
        Description = description,
        HelpName = helpName,
        DefaultValueFactory = _ => defaultValue,
        CustomParser = r =>
        {
            string text = r.Tokens.Count > 0 ? r.Tokens[0].Value : "";
            if (!int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out int value))
            {
                bool integer = System.Numerics.BigInteger.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out System.Numerics.BigInteger big);
                r.AddError(!integer ? $"{name}: '{text}' is not an integer"
                    : big.Sign < 0 ? $"{name}: must be at least {min}, got {text}"
                    : string.Create(CultureInfo.InvariantCulture, $"{name}: {text} is too large (at most {max:N0})"));
                return defaultValue;
            }
            if (value < min)
            {
                r.AddError($"{name}: must be at least {min}, got {value}");
            }
            else if (value > max)
            {
                r.AddError(string.Create(CultureInfo.InvariantCulture, $"{name}: must be at most {max:N0}{(why is null ? "" : $" ({why})")}, got {value:N0}"));
            }
            return value;
        },
    };

    /// <summary>A TCP port: <paramref name="min"/> (0 where it means any free port, else 1) to 65535.</summary>
    public static Option<int> PortOption(string name, string description, int defaultValue, int min) =>
        IntInRange(name, description, defaultValue, min, "PORT", MaxPort, "the largest TCP port");

    /// <summary>A port option without a default (the command or an environment variable decides).</summary>
    public static Option<int?> OptionalPortOption(string name, string description, int min) => new(name)
    {
        Description = description,
        HelpName = "PORT",
        CustomParser = r =>
        {
            string text = r.Tokens.Count > 0 ? r.Tokens[0].Value : "";
            if (!int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out int port) || port < min || port > MaxPort)
            {
                r.AddError($"{name}: '{text}' is not a port number ({min} to {MaxPort})");
                return null;
            }
            return port;
        },
    };

    private const int MaxPort = 65535;

    /// <summary>--workers: 0 (no actors) up to as many workers as a step can have chunks to deal; every worker beyond --chunks idles.</summary>
    public static Option<int> WorkersOption(string description) => IntInRange("--workers", description, 0, 0,
        max: TrainingConfig.MaxUpdateParts, why: $"a step is cut into at most {TrainingConfig.MaxUpdateParts} chunks (--chunks) or replicas, one per busy worker; more would only idle");

    public static Option<float> PositiveFloat(string name, string description, float defaultValue) => new(name)
    {
        Description = description,
        DefaultValueFactory = _ => defaultValue,
        CustomParser = r =>
        {
            float value = ParseFloat(r, name, defaultValue);
            if (!(value > 0) || !float.IsFinite(value))
            {
                r.AddError($"{name}: must be a positive number, got {r.Tokens[0].Value}");
            }
            return value;
        },
    };

    public static Option<float> FloatInRange(string name, string description, float defaultValue, float min, float max, bool maxExclusive) => new(name)
    {
        Description = description,
        DefaultValueFactory = _ => defaultValue,
        CustomParser = r =>
        {
            float v = ParseFloat(r, name, defaultValue);
            if (!(v >= min) || (maxExclusive ? !(v < max) : !(v <= max)))
            {
                string upper = max == float.MaxValue ? "∞)" : max.ToString(CultureInfo.InvariantCulture) + (maxExclusive ? ")" : "]");
                r.AddError($"{name}: must be in [{min.ToString(CultureInfo.InvariantCulture)}, {upper}, got {r.Tokens[0].Value}");
            }
            return v;
        },
    };

    private static float ParseFloat(ArgumentResult r, string name, float fallback)
    {
        string text = r.Tokens.Count > 0 ? r.Tokens[0].Value : "";
        if (!float.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out float value))
        {
            r.AddError($"{name}: '{text}' is not a number");
            return fallback;
        }
        // float.Parse rounds what is beyond float's range to ±∞: say so, rather than "must be positive, got 1e300".
        if (float.IsInfinity(value) && double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out double wide) && double.IsFinite(wide))
        {
            r.AddError(string.Create(CultureInfo.InvariantCulture, $"{name}: {text} is beyond a float's range (±{float.MaxValue:G3})"));
            return fallback;
        }
        return value;
    }

    public static Option<Activation> ActivationOption(string name, string description, Activation defaultValue, bool allowSoftmax)
    {
        return TypedDefaults.Register(new Option<Activation>(name)
        {
            Description = description,
            DefaultValueFactory = _ => defaultValue,
            HelpName = allowSoftmax ? "identity|sigmoid|tanh|relu|softmax" : "identity|sigmoid|tanh|relu",
            CustomParser = r =>
            {
                string text = r.Tokens.Count > 0 ? r.Tokens[0].Value : "";
                if (!Activations.TryParse(text, out Activation activation))
                {
                    r.AddError($"{name}: unknown activation '{text}' (expected identity, sigmoid, tanh, relu{(allowSoftmax ? " or softmax" : "")})");
                    return default;
                }
                if (activation == Activation.Softmax && !allowSoftmax)
                {
                    r.AddError($"{name}: softmax is only allowed on the output layer (--output-activation)");
                }
                return activation;
            },
        }, defaultValue.Name());
    }

    private delegate bool TryParse<T>(string text, out T value);

    /// <summary>
    /// An option whose value is one of a few names; an unknown name is a parse error listing them. Without
    /// <paramref name="defaultText"/> it has no default (the command decides; its description says how).
    /// </summary>
    private static Option<T> Choice<T>(string name, string description, T defaultValue, string? defaultText, string choices, TryParse<T> tryParse)
    {
        var option = new Option<T>(name)
        {
            Description = description,
            HelpName = choices,
            CustomParser = r =>
            {
                string text = r.Tokens.Count > 0 ? r.Tokens[0].Value : "";
                if (!tryParse(text, out T value))
                {
                    r.AddError($"{name}: unknown value '{text}' (expected {choices.Replace("|", ", ", StringComparison.Ordinal)})");
                }
                return value;
            },
        };
        if (defaultText is null)
        {
            return option;
        }
        option.DefaultValueFactory = _ => defaultValue;
        return TypedDefaults.Register(option, defaultText);
    }

    /// <summary>--early-stopping-metric: the validation score that picks the best epoch.</summary>
    public static Option<ValidationMetric> ValidationMetricOption() => Choice<ValidationMetric>("--early-stopping-metric",
        "Validation score that picks the best epoch (--keep best) and drives --early-stopping: loss (lower is better) or accuracy (higher is better).",
        ValidationMetric.Loss, "loss", "loss|accuracy", ValidationTracker.TryParseMetric);

    /// <summary>--outer-optimizer: the update a round of local steps ends with.</summary>
    public static Option<OuterOptimizerKind> OuterOptimizerOption() => Choice<OuterOptimizerKind>("--outer-optimizer",
        "With --replicas and --local-steps: the outer update on the replicas' mean change Δ̄: nesterov (DiLoCo's: --outer-lr 0.7, --outer-momentum 0.9) or sgd (θ ← θ − γ_out Δ̄; --outer-lr 1 is plain model averaging).",
        OuterOptimizerKind.Nesterov, "nesterov", "nesterov|sgd", static (string text, out OuterOptimizerKind kind) =>
        {
            (bool known, kind) = text switch { "nesterov" => (true, OuterOptimizerKind.Nesterov), "sgd" => (true, OuterOptimizerKind.Sgd), _ => (false, default) };
            return known;
        });

    /// <summary>--keep: which epoch's parameters the model file holds; null when not typed (the default depends on --early-stopping).</summary>
    public static Option<KeptModel?> KeepOption() => Choice<KeptModel?>("--keep",
        "Which parameters --out holds: best (the epoch with the best validation score; needs --validation-fraction) or last. Default: best with --early-stopping, else last.",
        null, null, "best|last", static (string text, out KeptModel? keep) =>
        {
            keep = text switch { "best" => KeptModel.Best, "last" => KeptModel.Last, _ => null };
            return keep is not null;
        });

    /// <summary>A fraction in [0, 1) (0 = none), e.g. --validation-fraction.</summary>
    public static Option<double> Fraction(string name, string description) => new(name)
    {
        Description = description,
        HelpName = "F",
        DefaultValueFactory = _ => 0,
        CustomParser = r => ParseFraction(r, name) ?? 0,
    };

    /// <summary>A fraction in [0, 1): null (with a parse error naming the option) for what is not a number.</summary>
    public static double? ParseFraction(ArgumentResult r, string name)
    {
        string text = r.Tokens.Count > 0 ? r.Tokens[0].Value : "";
        if (!double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out double value))
        {
            r.AddError($"{name}: '{text}' is not a number");
            return null;
        }
        if (!(value >= 0 && value < 1))
        {
            r.AddError($"{name}: must be in [0, 1), got {text}");
        }
        return value;
    }

    public static Option<ProgressMode> ProgressOption(string description) => Choice("--progress", description,
        ProgressMode.Auto, "auto", "auto|bar|plain|none", static (string text, out ProgressMode mode) =>
            Enum.TryParse(text, ignoreCase: true, out mode) && Enum.IsDefined(mode) && !int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out _));

    public static Option<Loss> LossOption(Loss defaultValue) => Choice("--loss",
        "Cost function: mse (J = 1/n Σ ½‖a − y‖², the lecture's) or cross_entropy (J = −1/n Σ log a[label], needs softmax output).",
        defaultValue, defaultValue.Name(), "mse|cross_entropy", Losses.TryParse);

    public static Option<OptimizerKind> OptimizerOption(OptimizerKind defaultValue) => Choice<OptimizerKind>("--optimizer",
        "sgd (w ← w − γ∂J/∂w), momentum (heavy ball; --nesterov for Nesterov) or adam (with decoupled weight decay).",
        defaultValue, OptimizerSettings.Name(defaultValue), "sgd|momentum|adam", OptimizerSettings.TryParse);

    public static Option<ScheduleKind> ScheduleOption() => Choice<ScheduleKind>("--schedule",
        "Learning-rate schedule: constant, step (× --decay-factor every --decay-every epochs) or cosine (to --min-lr).",
        ScheduleKind.Constant, OptimizerSettings.Name(ScheduleKind.Constant), "constant|step|cosine", OptimizerSettings.TryParse);

    /// <summary>--header: does a CSV file's first row name its columns? One option for every command that reads CSV.</summary>
    public static Option<CsvHeader> HeaderOption() => Choice<CsvHeader>("--header",
        "Does the CSV's first row name the columns? auto: yes unless every field in it is a number (a row of numbers with one word in it is refused as ambiguous: say yes or no).",
        CsvHeader.Auto, "auto", "auto|yes|no", TryParseHeader);

    private static bool TryParseHeader(string text, out CsvHeader header)
    {
        (bool known, header) = text switch
        {
            "auto" => (true, CsvHeader.Auto),
            "yes" => (true, CsvHeader.Yes),
            "no" => (true, CsvHeader.No),
            _ => (false, CsvHeader.Auto),
        };
        return known;
    }

    /// <summary>Comma-separated layer widths, e.g. "256,128"; "none" (or "") for no hidden layer.</summary>
    public static Option<int[]> LayersOption(string name, string description, int[] defaultValue) => TypedDefaults.Register(new Option<int[]>(name)
    {
        Description = description,
        DefaultValueFactory = _ => defaultValue,
        HelpName = "W1,W2,…",
        CustomParser = r => ParseWidths(r, name),
    }, defaultValue.Length == 0 ? "none" : string.Join(',', defaultValue));

    private static int[] ParseWidths(ArgumentResult r, string name)
    {
        string text = r.Tokens.Count > 0 ? r.Tokens[0].Value.Trim() : "";
        if (text.Length == 0 || text.Equals("none", StringComparison.OrdinalIgnoreCase))
        {
            return [];
        }
        var widths = new List<int>();
        foreach (string part in text.Split(','))
        {
            if (!int.TryParse(part.Trim(), NumberStyles.Integer, CultureInfo.InvariantCulture, out int width) || width < 1)
            {
                r.AddError($"{name}: '{part.Trim()}' is not a positive layer width (expected e.g. 256,128)");
                return [];
            }
            widths.Add(width);
        }
        return widths.ToArray();
    }

    public static Option<ulong> SeedOption() => new("--seed")
    {
        Description = "Seed of every random choice (initial weights, split, epoch order). Same data + options + seed → same model bits.",
        DefaultValueFactory = _ => 1UL,
        CustomParser = r =>
        {
            string text = r.Tokens.Count > 0 ? r.Tokens[0].Value : "";
            if (!ulong.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out ulong seed))
            {
                r.AddError(string.Create(CultureInfo.InvariantCulture, $"--seed: '{text}' is not an integer from 0 to {ulong.MaxValue}"));
            }
            return seed;
        },
    };
}
