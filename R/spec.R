# The model specification as R users write it (formula, family, priors), turned into what the Python side takes.

# mlnpe's families and the one link each supports (brms's names).
mlnpe_links <- c(gaussian = "identity", student = "identity", bernoulli = "logit", binomial = "logit",
                 poisson = "log", negbinomial = "log", lognormal = "identity", Gamma = "log")

# The formula as text, plus its response and trials variables and all data columns it uses: those of offset() terms
# too (offset(log(exposure)) needs `exposure`), but not brms's reserved `Intercept` of `0 + Intercept`, which is no
# column (Python rejects `Intercept` wherever it would be one).
formula_spec <- function(formula) {
  if (inherits(formula, "brmsformula")) {
    if (length(formula$pforms) || length(formula$pfix) || isTRUE(attr(formula$formula, "nl"))) {
      mlnpe_abort(c("`formula` has distributional or non-linear parts, which mlnpe does not support.",
                    i = "Use a single formula such as y ~ x + (1 + x | g)."), "mlnpe_formula_error")
    }
    formula <- formula$formula
  }
  if (is.character(formula) && length(formula) == 1L) {
    formula <- tryCatch(stats::as.formula(formula), error = function(e) {
      mlnpe_abort(c(sprintf("`formula` cannot be parsed: %s", conditionMessage(e)),
                    i = "Write it as in brms, e.g. y ~ x + (1 + x | g)."), "mlnpe_formula_error")
    })
  }
  if (!inherits(formula, "formula") || length(formula) != 3L) {
    mlnpe_abort(c(sprintf("`formula` must be a two-sided formula, not %s.", describe_value(formula)),
                  i = "E.g. y ~ x + (1 + x | g)."), "mlnpe_formula_error")
  }
  text <- gsub("\\s+", " ", paste(deparse(formula, width.cutoff = 500L), collapse = " "))
  lhs <- all.vars(formula[[2L]])
  vars <- setdiff(unique(all.vars(formula)), "Intercept")
  check_variable_names(vars)
  list(formula = formula, text = text, response = lhs[1L], lhs = lhs,
       trials = grepl("trials\\s*\\(", paste(deparse(formula[[2L]]), collapse = "")),
       vars = vars, groups = grouping_variables(formula[[3L]]))
}

# The variables right of `|` or `||` in group-level terms: (1 + x | g), (1 | a/b), (1 | a:b).
grouping_variables <- function(expr) {
  if (!is.call(expr)) return(character())
  if (identical(expr[[1L]], as.name("|")) || identical(expr[[1L]], as.name("||"))) {
    return(all.vars(expr[[3L]]))
  }
  unique(unlist(lapply(as.list(expr)[-1L], grouping_variables)))
}

# mlnpe's formulas (parsed in Python) take plain names: letters, digits, "." and "_", starting with a letter (or a
# dot and a letter). A name that needs backticks in R is an error with the fix, before Python starts.
check_variable_names <- function(vars) {
  bad <- vars[!grepl("^\\.?[A-Za-z][A-Za-z0-9._]*$", vars)]
  if (length(bad)) {
    fixed <- make.names(bad, unique = TRUE)
    mlnpe_abort(c(sprintf("The formula uses the column name%s %s, which mlnpe cannot parse (it needs backticks in R).",
                          if (length(bad) > 1L) "s" else "", paste0("`", bad, "`", collapse = ", ")),
                  i = "Variable names must be letters, digits, '.' and '_', starting with a letter (ASCII only).",
                  i = sprintf("Rename the column%s, e.g. names(data)[names(data) == \"%s\"] <- \"%s\", and the formula with %s.",
                              if (length(bad) > 1L) "s" else "", bad[1L], fixed[1L],
                              if (length(bad) > 1L) "them" else "it")),
                "mlnpe_formula_error")
  }
}

#' Families supported by mlnpe
#'
#' `mlnpe()` accepts stats families (`gaussian()`, `binomial()`, `poisson()`, `Gamma()`), brms families
#' (`brms::bernoulli()`, `brms::negbinomial()`, `brms::lognormal()`, `brms::student()`, ...) and family names.
#' Each family has one link: `gaussian`, `student`, `lognormal`: identity; `bernoulli`, `binomial`: logit;
#' `poisson`, `negbinomial`, `Gamma`: log. `Gamma()` defaults to brms's and R's inverse link, which mlnpe
#' replaces by the log link (with a message). `binomial()` without `trials()` in the formula fits a bernoulli
#' model, as `glm()` users expect.
#'
#' @param family A family object, a family function or a name.
#' @return An object of class `c("mlnpe_family", "family")` with elements `family` and `link`.
#' @examples
#' mlnpe_family(gaussian())
#' mlnpe_family("negbinomial")
#' @export
mlnpe_family <- function(family) {
  family_spec(family)
}

family_spec <- function(family, trials = TRUE) {
  if (is.function(family)) family <- family()
  link <- NULL
  if (inherits(family, "family")) {
    name <- family$family
    link <- family$link
  } else if (is.character(family) && length(family) == 1L && !is.na(family)) {
    name <- family
  } else {
    mlnpe_abort(c(sprintf("`family` must be a family object or name, not %s.", describe_value(family)),
                  i = sprintf("Supported: %s.", quote_list(names(mlnpe_links)))), "mlnpe_family_error")
  }
  known <- names(mlnpe_links)[match(tolower(name), tolower(names(mlnpe_links)))]
  if (is.na(known)) {
    mlnpe_abort(c(sprintf("`family` '%s' is not supported by mlnpe.", name),
                  i = sprintf("Supported families: %s.", quote_list(names(mlnpe_links)))),
                "mlnpe_family_error")
  }
  if (known == "binomial" && !trials) {
    message("binomial() without trials() in the formula: fitting a bernoulli model of a 0/1 response.")
    known <- "bernoulli"
    if (identical(link, "logit")) link <- NULL
  }
  want <- mlnpe_links[[known]]
  if (!is.null(link) && !identical(link, want)) {
    if (known == "Gamma" && identical(link, "inverse")) {
      message("mlnpe fits Gamma models with the log link (the inverse link cannot be simulated from the prior); ",
              "pass Gamma(link = \"log\") to silence this message.")
    } else {
      mlnpe_abort(c(sprintf("`family` %s supports only the '%s' link in mlnpe, not '%s'.", known, want, link),
                    i = sprintf("Use %s(link = \"%s\") or the family name \"%s\".",
                                if (known %in% c("gaussian", "binomial", "poisson", "Gamma")) known else
                                  paste0("brms::", known), want, known)),
                  "mlnpe_family_error")
    }
  }
  structure(list(family = known, link = want), class = c("mlnpe_family", "family"))
}

#' Priors for mlnpe models
#'
#' Specifies a prior as [brms::prior()] / [brms::set_prior()] do, for users without brms (brms's own
#' `prior()` objects work as well). Every prior must be proper, because mlnpe learns from simulations drawn
#' from the prior: brms's flat default on `b` is replaced by a weakly informative normal prior scaled by the
#' data (see the Python documentation of `default_priors`).
#'
#' Supported distributions: `normal`, `student_t`, `cauchy`, `exponential`, `gamma`, `lognormal`, `beta`,
#' `lkj` (class `cor`), `uniform`, `inv_gamma`, with Stan's parameterizations. Classes: `Intercept`, `b`,
#' `sd`, `cor`, `sigma`, `shape`, `nu`. As in brms, a formula with `0 + Intercept` has no class `Intercept`: its
#' intercept `b_Intercept` is a class `b` coefficient (`coef = Intercept` targets it alone), not centred.
#'
#' @param prior The prior, as a string (`"normal(0, 1)"`) or an expression (`normal(0, 1)`).
#' @param class Parameter class, as a string or a name.
#' @param coef Coefficient (classes `b` and `sd`); `""` for all.
#' @param group Grouping factor (classes `sd` and `cor`); `""` for all.
#' @param lb,ub Optional truncation bounds; scale parameters are bounded below by 0 automatically.
#' @return A data frame of class `mlnpe_prior` with brms's prior columns. Combine priors with `+` or `c()`.
#' @examples
#' mlnpe_prior(normal(0, 1), class = b) + mlnpe_prior("student_t(3, 0, 2)", class = "sd")
#' @export
mlnpe_prior <- function(prior, class = "b", coef = "", group = "", lb = NA, ub = NA) {
  prior <- as_text(substitute(prior), parent.frame(), evaluate_symbol = TRUE)
  new_mlnpe_prior(data.frame(
    prior = prior, class = as_text(substitute(class)), coef = as_text(substitute(coef)),
    group = as_text(substitute(group)), resp = "", dpar = "", nlpar = "",
    lb = bound_text(lb), ub = bound_text(ub), source = "user", stringsAsFactors = FALSE
  ))
}

new_mlnpe_prior <- function(x) {
  rownames(x) <- NULL
  class(x) <- c("mlnpe_prior", "data.frame")
  x
}

as_text <- function(expr, env = NULL, evaluate_symbol = FALSE) {
  if (is.character(expr)) return(expr)
  if (is.symbol(expr) && evaluate_symbol) {
    value <- eval(expr, env)
    if (!is.character(value) || length(value) != 1L) {
      mlnpe_abort(sprintf("`prior` must be a distribution such as normal(0, 1), not the object '%s'.",
                          as.character(expr)), "mlnpe_prior_error")
    }
    return(value)
  }
  if (is.symbol(expr)) return(as.character(expr))
  gsub("\\s+", " ", paste(deparse(expr, width.cutoff = 500L), collapse = ""))
}

bound_text <- function(x) {
  if (is.null(x) || (length(x) == 1L && is.na(x))) return("")
  if (!is.numeric(x) || length(x) != 1L) {
    mlnpe_abort(sprintf("Prior bounds must be numbers or NA, not %s.", describe_value(x)), "mlnpe_prior_error")
  }
  format(x, digits = 15)
}

#' @export
`+.mlnpe_prior` <- function(e1, e2) {
  c(e1, e2)
}

#' @export
c.mlnpe_prior <- function(...) {
  parts <- lapply(list(...), function(p) as.data.frame(prior_frame(p)))
  new_mlnpe_prior(do.call(rbind, parts))
}

#' @export
print.mlnpe_prior <- function(x, ...) {
  df <- as.data.frame(unclass(x), stringsAsFactors = FALSE)
  keep <- intersect(c("prior", "class", "coef", "group", "lb", "ub", "source"), names(df))
  print(df[keep], right = TRUE, row.names = FALSE)
  invisible(x)
}

# Any accepted prior specification as one data frame with brms's columns.
prior_frame <- function(prior) {
  columns <- c("prior", "class", "coef", "group", "resp", "dpar", "nlpar", "lb", "ub", "source")
  if (is.null(prior)) return(NULL)
  if (is.data.frame(prior)) {
    df <- as.data.frame(unclass(prior), stringsAsFactors = FALSE)
    if (!all(c("prior", "class") %in% names(df))) {
      mlnpe_abort(c("`prior` must have the columns 'prior' and 'class' of a brms prior table.",
                    i = "Build priors with brms::prior() or mlnpe_prior()."), "mlnpe_prior_error")
    }
    for (col in setdiff(columns, names(df))) df[[col]] <- ""
    return(df[columns])
  }
  if (is.list(prior) && !is.object(prior)) {
    parts <- lapply(prior, prior_frame)
    return(do.call(rbind, parts))
  }
  mlnpe_abort(c(sprintf("`prior` must be NULL, brms::prior() or mlnpe_prior() output, not %s.",
                        describe_value(prior)),
                i = "E.g. prior = mlnpe_prior(normal(0, 1), class = b)."), "mlnpe_prior_error")
}

# The priors as rows for Python: prior, class, coef, group, lb, ub (NULL where empty).
prior_rows <- function(prior) {
  df <- prior_frame(prior)
  if (is.null(df) || !nrow(df)) return(list())
  empty <- function(x) is.na(x) | !nzchar(trimws(as.character(x)))
  for (col in c("resp", "dpar", "nlpar")) {
    bad <- !empty(df[[col]])
    if (any(bad)) {
      mlnpe_abort(c(sprintf("`prior` row %d sets %s = '%s', which mlnpe does not support.", which(bad)[1L], col,
                            df[[col]][bad][1L]),
                    i = "mlnpe models have one response and no distributional or non-linear parameters."),
                  "mlnpe_prior_error")
    }
  }
  flat <- empty(df$prior)
  if (any(flat)) {
    mlnpe_abort(c(sprintf("`prior` row %d is flat (improper); mlnpe needs proper priors because it trains on draws from them.",
                          which(flat)[1L]),
                  i = "Use e.g. mlnpe_prior(normal(0, 2.5), class = b) instead of a flat prior."),
                "mlnpe_prior_error")
  }
  number <- function(x) if (empty(x)) NULL else as.numeric(x)
  text <- function(x) if (empty(x)) "" else as.character(x)
  lapply(seq_len(nrow(df)), function(i) {
    cls <- as.character(df$class[i])
    # brms writes LKJ priors on the Cholesky factor L; mlnpe's class is cor
    if (identical(cls, "L")) cls <- "cor"
    list(prior = sub("^lkj_corr_cholesky\\(", "lkj(", as.character(df$prior[i])), class = cls,
         coef = text(df$coef[i]), group = text(df$group[i]), lb = number(df$lb[i]), ub = number(df$ub[i]))
  })
}
